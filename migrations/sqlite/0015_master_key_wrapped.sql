-- A master-key version held by an external key source (a PKCS#11 module, or a transit
-- key service) is stored here wrapped by that source; the vault unwraps it through the
-- source when it starts and keeps it in memory. NULL for a key file, an environment
-- variable or a passphrase (the key is outside the database), and once the version is
-- destroyed.
ALTER TABLE master_keys ADD COLUMN wrapped BLOB;

-- The cipher a master-key version wraps with: NULL or 'AES-256-GCM', or 'SM4-GCM' for a
-- version made with crypto_suite = "sm".
ALTER TABLE master_keys ADD COLUMN algorithm TEXT;
