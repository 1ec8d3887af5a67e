-- The serving nodes of this vault and the key versions each has loaded (master key,
-- blind-index key), written by each node every second. A rotation waits until every node
-- seen lately has loaded the new version before it uses it. Nothing secret is kept here.
CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    host            TEXT NOT NULL,
    listen          TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    seen_at         INTEGER NOT NULL,
    master_versions TEXT NOT NULL,
    blind_versions  TEXT NOT NULL
);
