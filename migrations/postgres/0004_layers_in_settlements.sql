-- A settlement's layers move into its own row, as a JSON array of arrays, one per layer in layer
-- order: [product_code, period_start, period_end, terms_version, layer_order, benefit_code or null,
-- eligible_fen, deductible_fen, payout_fen, reasons]. Layers were always written and read with their
-- settlement; as rows of their own they cost a heap tuple and two index entries each, about half of
-- all the writes of a settled claim. `settlement_layers` stays as a view for the reports that
-- filter or sum by product. The column is TEXT (the queries cast it) so that both backends bind
-- and read it the same way.
ALTER TABLE settlements ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';

UPDATE settlements s SET layers = COALESCE((
    SELECT json_agg(json_build_array(l.product_code, l.period_start, l.period_end, l.terms_version,
                                     l.layer_order, l.benefit_code, l.eligible_fen, l.deductible_fen,
                                     l.payout_fen, l.reasons) ORDER BY l.layer_index)::text
    FROM settlement_layers l WHERE l.seq = s.seq), '[]');

DROP TABLE settlement_layers;

CREATE VIEW settlement_layers AS
SELECT s.seq                         AS seq,
       (j.ordinality - 1)::BIGINT    AS layer_index,
       j.value ->> 0                 AS product_code,
       j.value ->> 1                 AS period_start,
       j.value ->> 2                 AS period_end,
       (j.value ->> 3)::BIGINT       AS terms_version,
       (j.value ->> 4)::BIGINT       AS layer_order,
       j.value ->> 5                 AS benefit_code,
       (j.value ->> 6)::BIGINT       AS eligible_fen,
       (j.value ->> 7)::BIGINT       AS deductible_fen,
       (j.value ->> 8)::BIGINT       AS payout_fen,
       j.value ->> 9                 AS reasons
FROM settlements s
CROSS JOIN LATERAL jsonb_array_elements(s.layers::jsonb) WITH ORDINALITY AS j (value, ordinality);
