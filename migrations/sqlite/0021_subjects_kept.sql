-- A subject row is never deleted (erasure keeps it, with `erased_at`) and its id never
-- changes: a rule of the database on both stores (on PostgreSQL, where the ties of a
-- subject's rows to it are checked once per statement, it is what makes that check as
-- strong as a foreign key; here the foreign keys stay, and the rule is kept alike).
CREATE TRIGGER subjects_no_delete BEFORE DELETE ON subjects
BEGIN
    SELECT RAISE(ABORT, 'a subject is never deleted and its id never changes (erasure keeps the row)');
END;
CREATE TRIGGER subjects_id_fixed BEFORE UPDATE OF id ON subjects
WHEN OLD.id IS NOT NEW.id
BEGIN
    SELECT RAISE(ABORT, 'a subject is never deleted and its id never changes (erasure keeps the row)');
END;
