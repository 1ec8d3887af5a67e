-- Tables whose rows are found only by their primary key keep each row once, in the key's
-- order (WITHOUT ROWID): before, SQLite stored every row in a rowid table and its key a
-- second time in an automatic index, two B-trees written per insert. Measured on an
-- import of 200,000 six-field subjects: 2,300 bytes a subject before, about 1,400 after.

CREATE TABLE subject_fields_by_key (
    subject_id  TEXT    NOT NULL REFERENCES subjects (id),
    field       TEXT    NOT NULL,
    dek_version INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, field)
) WITHOUT ROWID;
INSERT INTO subject_fields_by_key (subject_id, field, dek_version, sealed, updated_at)
    SELECT subject_id, field, dek_version, sealed, updated_at FROM subject_fields;
DROP TABLE subject_fields;
ALTER TABLE subject_fields_by_key RENAME TO subject_fields;

CREATE TABLE subject_keys_by_key (
    subject_id  TEXT    NOT NULL REFERENCES subjects (id),
    version     INTEGER NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped     BLOB    NOT NULL,
    encryptions INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, version)
) WITHOUT ROWID;
INSERT INTO subject_keys_by_key (subject_id, version, kek_version, wrapped, encryptions, created_at)
    SELECT subject_id, version, kek_version, wrapped, encryptions, created_at FROM subject_keys;
DROP TABLE subject_keys;
ALTER TABLE subject_keys_by_key RENAME TO subject_keys;

CREATE TABLE blind_index_by_key (
    field      TEXT NOT NULL,
    digest     BLOB NOT NULL,
    subject_id TEXT NOT NULL REFERENCES subjects (id),
    PRIMARY KEY (field, digest, subject_id)
) WITHOUT ROWID;
INSERT INTO blind_index_by_key (field, digest, subject_id)
    SELECT field, digest, subject_id FROM blind_index;
DROP TABLE blind_index;
ALTER TABLE blind_index_by_key RENAME TO blind_index;
CREATE INDEX blind_index_subject ON blind_index (subject_id, field);
