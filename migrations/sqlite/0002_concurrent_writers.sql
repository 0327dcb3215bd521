-- The running loss-ratio figures are split into shards, as on PostgreSQL (see
-- migrations/postgres/0002_concurrent_writers.sql), so both backends share the same SQL. SQLite has
-- one writer at a time and uses shard 0 only. `product_totals` stays, as a view summing the shards.

CREATE TABLE product_total_shards (
    product_code         TEXT   NOT NULL,
    period_start         TEXT   NOT NULL,
    shard                BIGINT NOT NULL,
    written_premium_fen  BIGINT NOT NULL,
    enrolled_members     BIGINT NOT NULL,
    paid_fen             BIGINT NOT NULL,
    paid_claims          BIGINT NOT NULL,
    PRIMARY KEY (product_code, period_start, shard)
);

INSERT INTO product_total_shards
    (product_code, period_start, shard, written_premium_fen, enrolled_members, paid_fen, paid_claims)
SELECT product_code, period_start, 0, written_premium_fen, enrolled_members, paid_fen, paid_claims
FROM product_totals;

DROP TABLE product_totals;

CREATE VIEW product_totals AS
SELECT product_code,
       period_start,
       CAST(SUM(written_premium_fen) AS BIGINT) AS written_premium_fen,
       CAST(SUM(enrolled_members) AS BIGINT)    AS enrolled_members,
       CAST(SUM(paid_fen) AS BIGINT)            AS paid_fen,
       CAST(SUM(paid_claims) AS BIGINT)         AS paid_claims
FROM product_total_shards
GROUP BY product_code, period_start;
