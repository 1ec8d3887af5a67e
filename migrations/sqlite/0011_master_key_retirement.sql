-- A master-key version is destroyed (`piivault keys retire --master`) once nothing is
-- wrapped under it. Its check value stays, so a key file that still holds it is
-- recognised and the version is left unused.
ALTER TABLE master_keys ADD COLUMN destroyed_at INTEGER;

-- Nothing may be wrapped under a destroyed or unknown master-key version: a node that
-- has not yet heard of a retirement cannot write a key that no one could unwrap.
CREATE TRIGGER subject_keys_live_kek_insert BEFORE INSERT ON subject_keys
WHEN NOT EXISTS (SELECT 1 FROM master_keys WHERE version = NEW.kek_version AND destroyed_at IS NULL)
BEGIN SELECT RAISE(ABORT, 'master key version destroyed or unknown'); END;

CREATE TRIGGER subject_keys_live_kek_update BEFORE UPDATE OF kek_version ON subject_keys
WHEN NOT EXISTS (SELECT 1 FROM master_keys WHERE version = NEW.kek_version AND destroyed_at IS NULL)
BEGIN SELECT RAISE(ABORT, 'master key version destroyed or unknown'); END;

CREATE TRIGGER system_keys_live_kek_insert BEFORE INSERT ON system_keys
WHEN NOT EXISTS (SELECT 1 FROM master_keys WHERE version = NEW.kek_version AND destroyed_at IS NULL)
BEGIN SELECT RAISE(ABORT, 'master key version destroyed or unknown'); END;

CREATE TRIGGER system_keys_live_kek_update BEFORE UPDATE OF kek_version ON system_keys
WHEN NOT EXISTS (SELECT 1 FROM master_keys WHERE version = NEW.kek_version AND destroyed_at IS NULL)
BEGIN SELECT RAISE(ABORT, 'master key version destroyed or unknown'); END;
