-- PIPIA records (PIPL Art. 56: kept at least three years). Every record the policy
-- holds is copied here when the policy loads, each version once, so it outlives its
-- removal from pipia.toml. Rows never change; one may be removed only three years after
-- its date.
CREATE TABLE pipia_records (
    id          TEXT NOT NULL,
    digest      TEXT NOT NULL,
    date        TEXT NOT NULL,
    conclusion  TEXT NOT NULL,
    reviewer    TEXT NOT NULL,
    archived_at INTEGER NOT NULL,
    PRIMARY KEY (id, digest)
);

CREATE TRIGGER pipia_records_no_update BEFORE UPDATE ON pipia_records
BEGIN
    SELECT RAISE(ABORT, 'PIPIA records are kept as recorded');
END;

CREATE TRIGGER pipia_records_kept BEFORE DELETE ON pipia_records
WHEN OLD.date > date('now', '-3 years')
BEGIN
    SELECT RAISE(ABORT, 'PIPIA records are kept at least three years (PIPL Art. 56)');
END;
