-- Pruning the audit trail after its retention period: events up to a pruning anchor may
-- be deleted (after being archived); the anchor must match a signed checkpoint, which
-- `audit verify` checks, so an anchor planted by hand is caught.

CREATE TABLE audit_anchors (
    seq       INTEGER PRIMARY KEY,
    hash      BLOB    NOT NULL,
    pruned_at INTEGER NOT NULL
);

CREATE TRIGGER audit_anchors_no_update BEFORE UPDATE ON audit_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit anchors are append-only');
END;

CREATE TRIGGER audit_anchors_no_delete BEFORE DELETE ON audit_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit anchors are append-only');
END;

DROP TRIGGER audit_events_no_delete;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > (SELECT COALESCE(MAX(seq), 0) FROM audit_anchors)
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
