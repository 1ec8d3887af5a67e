-- The tie of a blind-index entry to its subject is checked when the transaction commits
-- (a deferred foreign key) instead of after every statement.
--
-- Why: an immediate foreign key makes SQLite keep a statement journal for every
-- multi-row INSERT into the table (it must be able to undo the statement half-way), a
-- copy of every page the statement touches. The blind index is keyed by an HMAC, so an
-- import's entries land on random pages: at 1,000,000 six-field subjects that was
-- about 18 GB written to temporary files, as much again as the database itself wrote.
--
-- What stays the same: no entry can name a subject that does not exist when its
-- transaction commits, and subjects are never deleted (0021); a statement run on its
-- own that breaks the tie is undone whole, as before. What changes: inside a longer
-- transaction the refusal comes at COMMIT, and the whole transaction is rolled back.
CREATE TABLE blind_index_tied_at_commit (
    field       TEXT    NOT NULL,
    digest      BLOB    NOT NULL,
    subject_id  TEXT    NOT NULL REFERENCES subjects (id) DEFERRABLE INITIALLY DEFERRED,
    key_version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (field, digest, subject_id)
) WITHOUT ROWID;
INSERT INTO blind_index_tied_at_commit (field, digest, subject_id, key_version)
    SELECT field, digest, subject_id, key_version FROM blind_index;
DROP TABLE blind_index;
ALTER TABLE blind_index_tied_at_commit RENAME TO blind_index;
CREATE INDEX blind_index_subject ON blind_index (subject_id, field);
