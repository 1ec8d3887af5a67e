-- Which events are about which subject is no longer indexed by every audit commit (one
-- random index page written per event): the audit indexer maintains it afterwards, in
-- batches, in the file attached as `audit_index` (see src/store/audit_index.rs, which
-- creates its tables: the file is derived data, made again if it is lost).
DROP INDEX audit_events_subject;
