-- The trail's time and token indexes are no longer maintained by every audit commit
-- (each cost the commit a page or more of its WAL): the audit indexer keeps them
-- afterwards, in batches, in the attached `audit_index` file (see
-- src/store/audit_index.rs): `actor_events` for the token, `time_blocks` (each block of
-- events' earliest and latest time) for the time. That file is made again from the trail
-- when its layout is older.
DROP INDEX audit_events_ts;
DROP INDEX audit_events_actor;
