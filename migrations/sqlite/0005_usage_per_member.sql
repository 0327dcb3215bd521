-- A member's accumulators move into one row, as a JSON array of arrays, one per product period and
-- benefit in key order: [product_code, period_start, benefit_code, deductible_used_fen,
-- band_position_fen, paid_fen]. A claim changed three or four `accumulators` rows, one upsert each
-- (the largest part of the writer's time); now it rewrites one row, which the writer, holding the
-- member's whole usage already, writes whole. `accumulators` stays as a view for reading.
CREATE TABLE member_usage (
    member_id  TEXT NOT NULL PRIMARY KEY,
    usage      TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO member_usage (member_id, usage)
SELECT member_id,
       json_group_array(json_array(product_code, period_start, benefit_code, deductible_used_fen,
                                   band_position_fen, paid_fen)
                        ORDER BY product_code, period_start, benefit_code)
FROM accumulators
GROUP BY member_id;

DROP TABLE accumulators;

CREATE VIEW accumulators AS
SELECT u.member_id                                  AS member_id,
       json_extract(j.value, '$[0]')                AS product_code,
       json_extract(j.value, '$[1]')                AS period_start,
       json_extract(j.value, '$[2]')                AS benefit_code,
       CAST(json_extract(j.value, '$[3]') AS INTEGER) AS deductible_used_fen,
       CAST(json_extract(j.value, '$[4]') AS INTEGER) AS band_position_fen,
       CAST(json_extract(j.value, '$[5]') AS INTEGER) AS paid_fen
FROM member_usage u, json_each(u.usage) j;
