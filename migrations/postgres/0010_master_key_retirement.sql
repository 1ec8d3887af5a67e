-- A master-key version is destroyed (`piivault keys retire --master`) once nothing is
-- wrapped under it. Its check value stays, so a key file that still holds it is
-- recognised and the version is left unused.
ALTER TABLE master_keys ADD COLUMN destroyed_at BIGINT;

-- Nothing may be wrapped under a destroyed or unknown master-key version: a node that
-- has not yet heard of a retirement cannot write a key that no one could unwrap.
-- An insert is checked once per statement (an import inserts thousands of keys in one);
-- an update only where it changes the wrapping version (not the usage counter).
CREATE FUNCTION piivault_live_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM new_rows n
        WHERE NOT EXISTS (
            SELECT 1 FROM master_keys m WHERE m.version = n.kek_version AND m.destroyed_at IS NULL
        )
    ) THEN
        RAISE EXCEPTION 'master key version destroyed or unknown';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION piivault_live_kek_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM master_keys m WHERE m.version = NEW.kek_version AND m.destroyed_at IS NULL
    ) THEN
        RAISE EXCEPTION 'master key version destroyed or unknown';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER subject_keys_live_kek_insert AFTER INSERT ON subject_keys
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION piivault_live_kek();
CREATE TRIGGER subject_keys_live_kek_update BEFORE UPDATE OF kek_version ON subject_keys
    FOR EACH ROW WHEN (OLD.kek_version IS DISTINCT FROM NEW.kek_version)
    EXECUTE FUNCTION piivault_live_kek_row();
CREATE TRIGGER system_keys_live_kek_insert AFTER INSERT ON system_keys
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION piivault_live_kek();
CREATE TRIGGER system_keys_live_kek_update BEFORE UPDATE OF kek_version ON system_keys
    FOR EACH ROW WHEN (OLD.kek_version IS DISTINCT FROM NEW.kek_version)
    EXECUTE FUNCTION piivault_live_kek_row();
