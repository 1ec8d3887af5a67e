-- Audit trail (PostgreSQL). Append-only: UPDATE, DELETE and TRUNCATE are refused by triggers.
-- Each event carries the SHA-256 of the previous one; signed checkpoints anchor the chain.
-- Never a value, never a secret: only ids, names, codes and times.

CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    ts          BIGINT NOT NULL,
    actor_token TEXT   NOT NULL,
    actor_role  TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    subject     TEXT,
    field       TEXT,
    target      TEXT,
    purpose     TEXT   NOT NULL,
    decision    TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    prev_hash   BYTEA  NOT NULL,
    hash        BYTEA  NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_subject ON audit_events (subject, ts);
CREATE INDEX audit_events_actor ON audit_events (actor_token, ts);

CREATE FUNCTION piivault_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION piivault_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION piivault_append_only();

CREATE TABLE audit_checkpoints (
    seq        BIGINT NOT NULL,
    hash       BYTEA  NOT NULL,
    ts         BIGINT NOT NULL,
    key_id     TEXT   NOT NULL,
    signature  BYTEA  NOT NULL,
    PRIMARY KEY (seq, key_id)
);

CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION piivault_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION piivault_append_only();
