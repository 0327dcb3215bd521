-- No planner statistics for the wide columns that no query filters, joins or sorts on: the
-- canonical claim and the layers (JSON), the reasons and the settlement time, and a member's usage
-- (JSON). `ANALYZE` (autovacuum's, or the ledger's own after 2,048, 8,192, 32,768, ... settlements)
-- read and sorted a sample of each of them for nothing: `ANALYZE settlements` took 370 ms at
-- 62,000 settlements, 200 to 250 ms without them (docs/benchmarks.md).
ALTER TABLE settlements
    ALTER COLUMN claim_json SET STATISTICS 0,
    ALTER COLUMN layers SET STATISTICS 0,
    ALTER COLUMN reasons SET STATISTICS 0,
    ALTER COLUMN settled_at SET STATISTICS 0;
ALTER TABLE member_usage
    ALTER COLUMN usage SET STATISTICS 0;
