use super::{is_conflict, now_ms, Store, StoreError};

#[derive(Debug, Clone)]
pub struct MasterKeyRow {
    pub version: i64,
    pub check_value: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct SystemKeyRow {
    pub name: String,
    pub version: i64,
    pub kek_version: i64,
    pub wrapped: Vec<u8>,
}

impl Store {
    pub async fn master_keys(&self) -> Result<Vec<MasterKeyRow>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, check_value FROM master_keys ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(version, check_value)| MasterKeyRow {
                version,
                check_value,
            })
            .collect())
    }

    pub async fn system_keys(&self) -> Result<Vec<SystemKeyRow>, StoreError> {
        let rows: Vec<(String, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT name, version, kek_version, wrapped FROM system_keys ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, version, kek_version, wrapped)| SystemKeyRow {
                name,
                version,
                kek_version,
                wrapped,
            })
            .collect())
    }

    /// Initialises an empty vault in one transaction: master key check values, wrapped
    /// system keys and metadata. Returns `Conflict` if another node initialised it first.
    pub async fn initialise(
        &self,
        masters: &[MasterKeyRow],
        system: &[SystemKeyRow],
        meta: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write(super::Writer::Shared, false).await?;
        let claimed =
            sqlx::query("INSERT INTO vault_meta (key, value) VALUES ('initialised_at', $1)")
                .bind(now.to_string())
                .execute(&mut *tx.conn())
                .await;
        match claimed {
            Err(e) if is_conflict(&e) => {
                tx.rollback().await;
                return Err(StoreError::Conflict);
            }
            other => other?,
        };
        for (key, value) in meta {
            sqlx::query("INSERT INTO vault_meta (key, value) VALUES ($1, $2)")
                .bind(*key)
                .bind(value.as_str())
                .execute(&mut *tx.conn())
                .await?;
        }
        for m in masters {
            sqlx::query(
                "INSERT INTO master_keys (version, check_value, created_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.check_value.as_slice())
            .bind(now)
            .execute(&mut *tx.conn())
            .await?;
        }
        for k in system {
            sqlx::query(
                "INSERT INTO system_keys (name, version, kek_version, wrapped, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(k.name.as_str())
            .bind(k.version)
            .bind(k.kek_version)
            .bind(k.wrapped.as_slice())
            .bind(now)
            .execute(&mut *tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Records the check value of a master key version seen for the first time.
    pub async fn add_master_key(&self, row: &MasterKeyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO master_keys (version, check_value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(row.version)
        .bind(row.check_value.as_slice())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// One line of the key inventory, as stored (no key material).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyVersionRow {
    /// `master`, `data`, or a system key's name (`blind_index`, `token_hash`).
    pub kind: String,
    pub version: i64,
    /// The master-key version that wraps it (none for a master key).
    pub wrapped_by: Option<i64>,
    pub created_at: i64,
    /// Data keys: how many subjects' keys are at this version and wrapping.
    pub keys: i64,
    /// Values encrypted under them (data keys; 0 where not counted).
    pub encryptions: i64,
}

impl Store {
    /// Every key version the store knows of: master versions (their check values only),
    /// system keys, and data keys counted per version and wrapping master version.
    pub async fn key_inventory(&self) -> Result<Vec<KeyVersionRow>, StoreError> {
        let row =
            |kind: String, version, wrapped_by, created_at, keys, encryptions| KeyVersionRow {
                kind,
                version,
                wrapped_by,
                created_at,
                keys,
                encryptions,
            };
        let mut out = Vec::new();
        let masters: Vec<(i64, i64)> =
            sqlx::query_as("SELECT version, created_at FROM master_keys ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        out.extend(
            masters
                .into_iter()
                .map(|(v, at)| row("master".into(), v, None, at, 1, 0)),
        );
        let system: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT name, version, kek_version, created_at FROM system_keys ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        out.extend(
            system
                .into_iter()
                .map(|(name, v, kek, at)| row(name, v, Some(kek), at, 1, 0)),
        );
        let data: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT version, kek_version, CAST(count(*) AS BIGINT), CAST(COALESCE(sum(encryptions), 0) AS BIGINT), \
             CAST(min(created_at) AS BIGINT) FROM subject_keys GROUP BY version, kek_version ORDER BY version, kek_version",
        )
        .fetch_all(&self.pool)
        .await?;
        out.extend(
            data.into_iter()
                .map(|(v, kek, n, enc, at)| row("data".into(), v, Some(kek), at, n, enc)),
        );
        Ok(out)
    }
}
