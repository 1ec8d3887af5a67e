-- Which events are about which subject is no longer indexed by every audit commit (one
-- random index page written per event): the audit indexer maintains it afterwards, in
-- batches (see src/store/audit_index.rs). The index starts empty and is made from the
-- trail by the first indexing steps; until then lookups scan the part not yet indexed.
DROP INDEX audit_events_subject;

CREATE SCHEMA audit_index;

CREATE TABLE audit_index.subject_events (
    subject TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (subject, seq)
);

CREATE TABLE audit_index.state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq    BIGINT  NOT NULL,
    through_hash   BYTEA,
    pruned_through BIGINT  NOT NULL
);

INSERT INTO audit_index.state (id, through_seq, through_hash, pruned_through) VALUES (1, 0, NULL, 0);
