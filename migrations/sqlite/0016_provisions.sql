-- Provisions of personal information to registered recipients (PIPL Art. 23, 25, 45):
-- who received which fields and collections of whom, when, for which purpose, through
-- which token and request. Names and ids only, never a value. Kept after an erasure: it
-- is the record of what went where, and it says which recipients must hear of it.
CREATE TABLE provisions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id  TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    fields      TEXT NOT NULL,
    collections TEXT NOT NULL,
    -- Where the recipient processes (CN: the mainland), and whether sensitive personal
    -- information was included: the yearly counts of transfers abroad come from these.
    region      TEXT NOT NULL,
    sensitive   INTEGER NOT NULL,
    token_id    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX provisions_subject ON provisions (subject_id, recipient);
CREATE INDEX provisions_region ON provisions (region, at);

-- Deletion notices owed to recipients (Art. 47 reaches processors too): one for each
-- recipient that received a subject's data, made in the transaction of the erasure or
-- of the consent withdrawal. An integration polls the pending ones and marks each
-- delivered once the recipient has been told.
CREATE TABLE deletion_notices (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id   TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    purpose      TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    delivered_by TEXT
);
CREATE INDEX deletion_notices_pending ON deletion_notices (delivered_at, id);
