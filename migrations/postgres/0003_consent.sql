-- Consent (PIPL Art. 14, 15, 29, 31, 39), PostgreSQL. Append-only history: a grant or a
-- withdrawal is a new row; the current state is the newest row per subject and purpose.

CREATE TABLE consent_events (
    seq             BIGSERIAL PRIMARY KEY,
    subject_id      TEXT   NOT NULL REFERENCES subjects (id),
    purpose         TEXT   NOT NULL,
    kind            TEXT   NOT NULL CHECK (kind IN ('grant', 'withdraw')),
    purpose_version BIGINT NOT NULL,
    notice_version  TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    separate        BIGINT NOT NULL,
    guardian        BIGINT NOT NULL,
    actor_token     TEXT   NOT NULL,
    at              BIGINT NOT NULL
);
CREATE INDEX consent_events_subject ON consent_events (subject_id, purpose, seq);

CREATE FUNCTION piivault_consent_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent history is never rewritten';
END;
$$;
CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION piivault_consent_history();
