-- A member's accumulators move into one row, as a JSON array of arrays, one per product period and
-- benefit in key order: [product_code, period_start, benefit_code, deductible_used_fen,
-- band_position_fen, paid_fen]. A claim changed three or four `accumulators` rows, one upsert (and
-- one heap tuple) each; now it rewrites one row, which the writer, holding the member's lock and
-- whole usage, writes whole. `accumulators` stays as a view for reading. TEXT, as for
-- `settlements.layers`.
CREATE TABLE member_usage (
    member_id  TEXT NOT NULL PRIMARY KEY,
    usage      TEXT NOT NULL
);

INSERT INTO member_usage (member_id, usage)
SELECT member_id,
       json_agg(json_build_array(product_code, period_start, benefit_code, deductible_used_fen,
                                 band_position_fen, paid_fen)
                ORDER BY product_code, period_start, benefit_code)::text
FROM accumulators
GROUP BY member_id;

DROP TABLE accumulators;

CREATE VIEW accumulators AS
SELECT u.member_id                AS member_id,
       j.value ->> 0              AS product_code,
       j.value ->> 1              AS period_start,
       j.value ->> 2              AS benefit_code,
       (j.value ->> 3)::BIGINT    AS deductible_used_fen,
       (j.value ->> 4)::BIGINT    AS band_position_fen,
       (j.value ->> 5)::BIGINT    AS paid_fen
FROM member_usage u
CROSS JOIN LATERAL jsonb_array_elements(u.usage::jsonb) AS j (value);
