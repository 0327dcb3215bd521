-- Settlements are found by service date through the month of it instead of the whole date. An
-- index entry goes after the last one of its key (the sequence number follows the key), so each
-- distinct key has one leaf page that every new settlement of that key changes: with whole dates,
-- about a thousand such pages (a claim's service date may lie anywhere in the periods the terms
-- cover), more than SQLite's page cache holds, and nearly one page written to the WAL a claim; with
-- months, a few dozen. Queries filtering by service date name the month too (store/rows.rs,
-- filter_sql): implied by the date condition, it lets the planner use this index.
CREATE INDEX settlements_service_month ON settlements (substr(service_date, 1, 7));
DROP INDEX settlements_service_date;
