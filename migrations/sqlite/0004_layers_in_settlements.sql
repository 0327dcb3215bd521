-- A settlement's layers move into its own row, as a JSON array of arrays, one per layer in layer
-- order: [product_code, period_start, period_end, terms_version, layer_order, benefit_code or null,
-- eligible_fen, deductible_fen, payout_fen, reasons]. Layers were always written and read with their
-- settlement; as rows of their own they cost three B-tree inserts each (row, key, product index),
-- about half of all the B-tree writes of a settled claim. `settlement_layers` stays as a view for
-- the reports that filter or sum by product.
ALTER TABLE settlements ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';

UPDATE settlements SET layers = COALESCE((
    SELECT json_group_array(json_array(l.product_code, l.period_start, l.period_end, l.terms_version,
                                       l.layer_order, l.benefit_code, l.eligible_fen, l.deductible_fen,
                                       l.payout_fen, l.reasons) ORDER BY l.layer_index)
    FROM settlement_layers l WHERE l.seq = settlements.seq), '[]');

DROP TABLE settlement_layers;

CREATE VIEW settlement_layers AS
SELECT s.seq                                        AS seq,
       CAST(j.key AS INTEGER)                       AS layer_index,
       json_extract(j.value, '$[0]')                AS product_code,
       json_extract(j.value, '$[1]')                AS period_start,
       json_extract(j.value, '$[2]')                AS period_end,
       CAST(json_extract(j.value, '$[3]') AS INTEGER) AS terms_version,
       CAST(json_extract(j.value, '$[4]') AS INTEGER) AS layer_order,
       json_extract(j.value, '$[5]')                AS benefit_code,
       CAST(json_extract(j.value, '$[6]') AS INTEGER) AS eligible_fen,
       CAST(json_extract(j.value, '$[7]') AS INTEGER) AS deductible_fen,
       CAST(json_extract(j.value, '$[8]') AS INTEGER) AS payout_fen,
       json_extract(j.value, '$[9]')                AS reasons
FROM settlements s, json_each(s.layers) j;

-- The tables read and written by key get no separate rowid B-tree: a lookup or an upsert by key
-- touches one B-tree instead of two.
CREATE TABLE accumulators_by_key (
    member_id            TEXT   NOT NULL,
    product_code         TEXT   NOT NULL,
    period_start         TEXT   NOT NULL,
    benefit_code         TEXT   NOT NULL,
    deductible_used_fen  BIGINT NOT NULL,
    band_position_fen    BIGINT NOT NULL,
    paid_fen             BIGINT NOT NULL,
    PRIMARY KEY (member_id, product_code, period_start, benefit_code)
) WITHOUT ROWID;
INSERT INTO accumulators_by_key SELECT member_id, product_code, period_start, benefit_code,
    deductible_used_fen, band_position_fen, paid_fen FROM accumulators;
DROP TABLE accumulators;
ALTER TABLE accumulators_by_key RENAME TO accumulators;

CREATE TABLE member_categories_by_key (
    member_id       TEXT NOT NULL REFERENCES members (member_id),
    effective_date  TEXT NOT NULL,
    category        TEXT NOT NULL,
    PRIMARY KEY (member_id, effective_date)
) WITHOUT ROWID;
INSERT INTO member_categories_by_key SELECT member_id, effective_date, category FROM member_categories;
DROP TABLE member_categories;
ALTER TABLE member_categories_by_key RENAME TO member_categories;

CREATE TABLE enrollments_by_key (
    member_id     TEXT    NOT NULL REFERENCES members (member_id),
    product_code  TEXT    NOT NULL,
    period_start  TEXT    NOT NULL,
    premium_fen   BIGINT  NOT NULL,
    PRIMARY KEY (member_id, product_code, period_start)
) WITHOUT ROWID;
INSERT INTO enrollments_by_key SELECT member_id, product_code, period_start, premium_fen FROM enrollments;
DROP TABLE enrollments;
ALTER TABLE enrollments_by_key RENAME TO enrollments;
