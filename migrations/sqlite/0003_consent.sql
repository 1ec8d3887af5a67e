-- Consent (PIPL Art. 14, 15, 29, 31, 39), SQLite. Append-only history: a grant or a
-- withdrawal is a new row; the current state is the newest row per subject and purpose.

CREATE TABLE consent_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id      TEXT    NOT NULL REFERENCES subjects (id),
    purpose         TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('grant', 'withdraw')),
    purpose_version INTEGER NOT NULL,
    notice_version  TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    separate        INTEGER NOT NULL,
    guardian        INTEGER NOT NULL,
    actor_token     TEXT    NOT NULL,
    at              INTEGER NOT NULL
);
CREATE INDEX consent_events_subject ON consent_events (subject_id, purpose, seq);

CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent history is never rewritten');
END;
