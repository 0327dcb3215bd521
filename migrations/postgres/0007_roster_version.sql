-- A counter that every committed change to the roster (members, their categories, their
-- enrollments) moves on, in the same transaction, whoever makes it: a writer of any process, claimsctl
-- or a repair by hand. A writer keeps the members it has read from one transaction to the next and
-- reads this counter after its locks at the start of each: while it has not moved, no roster change
-- has committed since, and the members it holds are as stored. (SQLite needs no counter: its single
-- writer reads `PRAGMA data_version`, which moves with any other connection's commit.)
--
-- The counter is one row: transactions that change the roster take its lock in turn, until they
-- commit. Settling never changes the roster and never takes it.
CREATE TABLE roster_version (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version   BIGINT  NOT NULL
);
INSERT INTO roster_version (version) VALUES (0);

CREATE FUNCTION roster_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE roster_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER members_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON members
    FOR EACH STATEMENT EXECUTE FUNCTION roster_changed();
CREATE TRIGGER member_categories_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON member_categories
    FOR EACH STATEMENT EXECUTE FUNCTION roster_changed();
CREATE TRIGGER enrollments_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON enrollments
    FOR EACH STATEMENT EXECUTE FUNCTION roster_changed();
