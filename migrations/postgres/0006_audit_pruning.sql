-- Pruning the audit trail after its retention period: events up to a pruning anchor may
-- be deleted (after being archived); the anchor must match a signed checkpoint, which
-- `audit verify` checks, so an anchor planted by hand is caught.

CREATE TABLE audit_anchors (
    seq       BIGINT PRIMARY KEY,
    hash      BYTEA  NOT NULL,
    pruned_at BIGINT NOT NULL
);

CREATE TRIGGER audit_anchors_append_only BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION piivault_append_only();

CREATE FUNCTION piivault_audit_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq <= (SELECT COALESCE(MAX(seq), 0) FROM audit_anchors) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;

DROP TRIGGER audit_events_append_only ON audit_events;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION piivault_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION piivault_audit_delete();
