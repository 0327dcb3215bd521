-- No query looks settlements up by member (a member's figures live in `accumulators`), and every
-- settlement paid for this index with one more random B-tree insert.
DROP INDEX settlements_member;
