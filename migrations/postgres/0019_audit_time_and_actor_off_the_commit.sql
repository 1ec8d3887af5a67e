-- The trail's time and token indexes are no longer maintained by every audit commit
-- (each cost the commit an index page or more): the audit indexer keeps them afterwards,
-- in batches (see src/store/audit_index.rs): `actor_events` for the token, `time_blocks`
-- (each block of events' earliest and latest time) for the time. The index is made again
-- from the start of the trail, so that every event is in the new tables; until it has
-- caught up, lookups scan the part not yet indexed.
DROP INDEX audit_events_ts;
DROP INDEX audit_events_actor;

CREATE TABLE audit_index.actor_events (
    actor TEXT   NOT NULL,
    seq   BIGINT NOT NULL,
    PRIMARY KEY (actor, seq)
);

CREATE TABLE audit_index.time_blocks (
    block  BIGINT PRIMARY KEY,
    min_ts BIGINT NOT NULL,
    max_ts BIGINT NOT NULL
);

TRUNCATE audit_index.subject_events;
UPDATE audit_index.state SET through_seq = 0, through_hash = NULL, pruned_through = 0 WHERE id = 1;
