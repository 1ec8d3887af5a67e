-- Bulk exports that need a second person (GB/T 35273 §7.1; data-export controls): an
-- export of more subjects than the configured threshold waits as a request until a
-- second token with the approving role approves it; then its requester may fetch it,
-- once. Ids and times only.
CREATE TABLE bulk_exports (
    id           TEXT PRIMARY KEY,
    subjects     TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    approved_by  TEXT,
    approved_at  BIGINT,
    delivered_at BIGINT
);
