-- Audit trail (SQLite). Append-only: UPDATE and DELETE are refused by triggers.
-- Each event carries the SHA-256 of the previous one; signed checkpoints anchor the chain.
-- Never a value, never a secret: only ids, names, codes and times.

CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    actor_token TEXT    NOT NULL,
    actor_role  TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    subject     TEXT,
    field       TEXT,
    target      TEXT,
    purpose     TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_subject ON audit_events (subject, ts);
CREATE INDEX audit_events_actor ON audit_events (actor_token, ts);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

-- Signed checkpoints: (seq, hash) of the chain head, signed with the audit key (Ed25519),
-- which is kept outside the database. Also written to an append-only file.
CREATE TABLE audit_checkpoints (
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    ts         INTEGER NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (seq, key_id)
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
