-- The rows that belong to a subject (keys, fields, index entries, records, consent
-- events) were tied to it by row-level foreign keys: for every row inserted, PostgreSQL
-- ran a query against `subjects` and locked the subject's row. In an import that was
-- 40% of the backend's time (perf, 200,000 six-field subjects: AfterTriggerEndQuery).
--
-- A subject row is never deleted (erasure keeps it, with `erased_at`) and its id never
-- changes; the triggers below make that a rule of the database, not only of the code.
-- With that rule, a row whose subject exists when it is written keeps its subject for
-- good, and the tie can be checked once per statement, against all its new rows at
-- once, with the same outcome as the foreign key: no row for a subject that does not
-- exist (SQLSTATE 23503).

CREATE FUNCTION piivault_subjects_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a subject is never deleted and its id never changes (erasure keeps the row)';
END
$$;

CREATE TRIGGER subjects_no_delete BEFORE DELETE ON subjects
    FOR EACH ROW EXECUTE FUNCTION piivault_subjects_kept();
CREATE TRIGGER subjects_no_truncate BEFORE TRUNCATE ON subjects
    FOR EACH STATEMENT EXECUTE FUNCTION piivault_subjects_kept();
CREATE TRIGGER subjects_id_fixed BEFORE UPDATE OF id ON subjects
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION piivault_subjects_kept();

-- The check probes the subjects' primary key once for each subject named in the
-- statement. The plan is pinned (no hash or merge join, no scan of `subjects`): a plan
-- made while `subjects` was small would otherwise go on reading the whole table for
-- every statement once it has grown.
CREATE FUNCTION piivault_subject_exists() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT subject_id FROM new_rows) n
        WHERE NOT EXISTS (SELECT 1 FROM subjects s WHERE s.id = n.subject_id)
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('a row of %s names a subject that does not exist', TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$$;

-- For each table: the check on insert and on update (consent_events is append-only:
-- its updates are refused already), then the foreign key goes.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['subject_keys', 'subject_fields', 'blind_index', 'records', 'consent_events'] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION piivault_subject_exists()',
            t || '_subject_insert', t);
        IF t <> 'consent_events' THEN
            EXECUTE format(
                'CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING NEW TABLE AS new_rows '
                'FOR EACH STATEMENT EXECUTE FUNCTION piivault_subject_exists()',
                t || '_subject_update', t);
        END IF;
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, t || '_subject_id_fkey');
    END LOOP;
END
$$;
