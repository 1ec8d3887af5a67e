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
