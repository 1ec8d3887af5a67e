-- piivault core schema (SQLite). Never edit after it lands; add a new migration.
-- Times are milliseconds since the Unix epoch. No column ever holds plaintext PI.

CREATE TABLE vault_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per master key (KEK) version: a check value, never the key.
CREATE TABLE master_keys (
    version     INTEGER PRIMARY KEY,
    check_value BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- System keys (blind index, token hash), wrapped by a KEK version.
CREATE TABLE system_keys (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

-- A subject row outlives erasure as a tombstone (erased_at set, nothing else kept).
CREATE TABLE subjects (
    id         TEXT    PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    erased_at  INTEGER
);

-- Per-subject data keys (DEKs), wrapped by a KEK version. Deleting them is erasure.
CREATE TABLE subject_keys (
    subject_id  TEXT    NOT NULL REFERENCES subjects (id),
    version     INTEGER NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped     BLOB    NOT NULL,
    encryptions INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, version)
);

-- One encrypted value per subject and field: nonce || ciphertext || tag.
CREATE TABLE subject_fields (
    subject_id  TEXT    NOT NULL REFERENCES subjects (id),
    field       TEXT    NOT NULL,
    dek_version INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, field)
);

-- Blind indexes: HMAC-SHA256 of normalised values of searchable fields.
CREATE TABLE blind_index (
    field      TEXT NOT NULL,
    digest     BLOB NOT NULL,
    subject_id TEXT NOT NULL REFERENCES subjects (id),
    PRIMARY KEY (field, digest, subject_id)
);
CREATE INDEX blind_index_subject ON blind_index (subject_id);

-- Record documents, each encrypted as a whole.
CREATE TABLE records (
    id          TEXT    PRIMARY KEY,
    subject_id  TEXT    NOT NULL REFERENCES subjects (id),
    collection  TEXT    NOT NULL,
    dek_version INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX records_subject ON records (subject_id, collection, created_at);

-- Bearer tokens: only a keyed hash of the secret is stored.
CREATE TABLE tokens (
    id          TEXT    PRIMARY KEY,
    secret_hash BLOB    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    purposes    TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
