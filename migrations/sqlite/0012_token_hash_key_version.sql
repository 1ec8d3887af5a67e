-- Which token-hash key version hashed each token's secret. A token-hash key rotation
-- (`piivault keys rotate --token-hash`) adds a version; a token moves to it the next
-- time it is used, and an old version is destroyed once no live token is under it.
ALTER TABLE tokens ADD COLUMN hash_key_version INTEGER NOT NULL DEFAULT 1;
