-- Changes other vault nodes must see at once: a revoked token, a consent granted or
-- withdrawn, a subject erased or put on hold. Each node polls this table and drops what it
-- cached about the key (see src/changes.rs). Ids only, never a value. Rows are written
-- under the audit chain's advisory lock, so sequence order is commit order; old rows are
-- pruned.
CREATE TABLE cache_changes (
    seq  BIGSERIAL PRIMARY KEY,
    kind TEXT      NOT NULL,
    key  TEXT      NOT NULL,
    at   BIGINT    NOT NULL
);
CREATE INDEX cache_changes_at ON cache_changes (at);
