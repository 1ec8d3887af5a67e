-- Which blind-index key version made each index entry. A blind-index key rotation
-- (`piivault keys rotate --blind-index`) adds a version and indexes every subject again
-- under it; lookups search under every live version meanwhile, and an old version is
-- destroyed once no entry is under it.
ALTER TABLE blind_index ADD COLUMN key_version INTEGER NOT NULL DEFAULT 1;
