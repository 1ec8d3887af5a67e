-- (PostgreSQL) Corrections and retention remove a subject's index entries for given fields. The
-- primary key (field, digest, subject_id) can serve that only by field, walking every
-- subject's entry for it; an index on exactly (subject_id, field) serves it directly.
DROP INDEX blind_index_subject;
CREATE INDEX blind_index_subject ON blind_index (subject_id, field);
