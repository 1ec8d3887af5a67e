-- Changes other vault processes must see at once: a revoked token, a consent granted or
-- withdrawn, a subject erased or put on hold. Each process polls this table and drops what
-- it cached about the key (see src/changes.rs). Ids only, never a value. Rows are
-- written under the chain lock, so their order is their commit order; old rows are pruned.
CREATE TABLE cache_changes (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT    NOT NULL,
    key  TEXT    NOT NULL,
    at   INTEGER NOT NULL
);
CREATE INDEX cache_changes_at ON cache_changes (at);
