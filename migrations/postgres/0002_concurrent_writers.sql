-- Several claimsd processes write to one database at once (docs/decisions.md, "Concurrency on
-- PostgreSQL"). Two changes make that possible without one lock for everything:
--
-- 1. The running loss-ratio figures are split into shards. Each writer connection adds its
--    settlements to its own shard row, so writers of different processes do not queue behind one
--    row lock per product period. `product_totals` stays, as a view summing the shards; a period's
--    shard 0 row is created with its terms, so every period has figures even before a claim.
-- 2. Reversals take their numbers from the settlements' sequence, so that settlements and reversals
--    share one order: for any two events that touched a common member or a common aggregate-capped
--    period, the one with the lower number committed first (the later one waited for the first's
--    lock before it drew its number). Replaying events in this order gives the stored figures.

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

ALTER TABLE reversals ALTER COLUMN seq DROP IDENTITY;
-- settlements_seq_seq is the identity sequence of settlements.seq.
SELECT setval('settlements_seq_seq', GREATEST(
    (SELECT COALESCE(MAX(seq), 0) FROM settlements),
    (SELECT COALESCE(MAX(seq), 0) FROM reversals),
    (SELECT last_value FROM settlements_seq_seq)), true);
ALTER TABLE reversals ALTER COLUMN seq SET DEFAULT nextval('settlements_seq_seq');
