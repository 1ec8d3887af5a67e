use super::changes::{note_in, KEYS};
use super::write::{op, Script, WriteOp};
use super::{is_conflict, now_ms, Store, StoreError};

#[derive(Debug, Clone)]
pub struct MasterKeyRow {
    pub version: i64,
    pub check_value: Vec<u8>,
    /// When `piivault keys retire --master` destroyed it (nothing is wrapped under it
    /// any more); `None` while it is live.
    pub destroyed_at: Option<i64>,
    /// The version's key, wrapped by an external key source (PKCS#11, transit); `None`
    /// when the key is held outside the database (key file, environment, passphrase)
    /// and once it is destroyed.
    pub wrapped: Option<Vec<u8>>,
    /// The cipher it wraps with: `AES-256-GCM` (also when none was recorded) or
    /// `SM4-GCM`.
    pub algorithm: Option<String>,
}

/// A wrapped key as stored: a subject's data key (`name` is the subject id,
/// `version` the DEK version) or a system key (`name` is its name).
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub name: String,
    pub version: i64,
    pub kek_version: i64,
    pub wrapped: Vec<u8>,
}

/// A key wrapped again: `wrapped` under `kek_version`, replacing what was under
/// `old_kek_version`.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    pub name: String,
    pub version: i64,
    pub old_kek_version: i64,
    pub kek_version: i64,
    pub wrapped: Vec<u8>,
}

/// How many stored keys one master-key version wraps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WrappedCount {
    pub subject_keys: i64,
    pub system_keys: i64,
}

impl WrappedCount {
    pub fn total(&self) -> i64 {
        self.subject_keys + self.system_keys
    }
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
        type Row = (i64, Vec<u8>, Option<i64>, Option<Vec<u8>>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT version, check_value, destroyed_at, wrapped, algorithm FROM master_keys \
             ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(version, check_value, destroyed_at, wrapped, algorithm)| MasterKeyRow {
                    version,
                    check_value,
                    destroyed_at,
                    wrapped,
                    algorithm,
                },
            )
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
                "INSERT INTO master_keys (version, check_value, created_at, wrapped, algorithm) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(m.version)
            .bind(m.check_value.as_slice())
            .bind(now)
            .bind(m.wrapped.as_deref())
            .bind(m.algorithm.as_deref())
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

    /// Records the check value of a master key version seen for the first time, and
    /// tells every node to read its key source again.
    pub async fn add_master_key(&self, row: &MasterKeyRow) -> Result<(), StoreError> {
        let change = self.add_master_key_op(row.clone());
        self.transact(change).await
    }

    /// [`Store::add_master_key`] as a change to commit with its audit event.
    pub fn add_master_key_op(&self, row: MasterKeyRow) -> WriteOp {
        op(move |conn| {
            let row = row.clone();
            Box::pin(async move {
                let now = now_ms();
                let mut script = Script::new(conn);
                script
                    .sql(
                        "INSERT INTO master_keys (version, check_value, created_at, wrapped, algorithm) \
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                    )
                    .bind(row.version)
                    .bind(row.check_value)
                    .bind(now)
                    .bind(row.wrapped)
                    .bind(row.algorithm);
                note_in(&mut script, KEYS, "master", now);
                script.run(conn).await
            })
        })
    }

    /// Up to `limit` subject keys wrapped under a master-key version other than
    /// `current`, in (subject, version) order after `after`.
    pub async fn subject_keys_not_under(
        &self,
        current: i64,
        after: Option<(&str, i64)>,
        limit: i64,
    ) -> Result<Vec<WrappedKey>, StoreError> {
        let (after_id, after_version) = after.unwrap_or(("", 0));
        let rows: Vec<(String, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT subject_id, version, kek_version, wrapped FROM subject_keys \
             WHERE (subject_id > $1 OR (subject_id = $1 AND version > $2)) AND kek_version <> $3 \
             ORDER BY subject_id, version LIMIT $4",
        )
        .bind(after_id)
        .bind(after_version)
        .bind(current)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, version, kek_version, wrapped)| WrappedKey {
                name,
                version,
                kek_version,
                wrapped,
            })
            .collect())
    }

    /// Stores subject keys wrapped again. Each row changes only if it is still
    /// wrapped as it was read (a concurrent erasure or key change wins).
    pub fn rewrap_subject_keys_op(&self, rows: Vec<Rewrapped>) -> WriteOp {
        rewrap_op(
            "UPDATE subject_keys SET kek_version = ?, wrapped = ? \
             WHERE subject_id = ? AND version = ? AND kek_version = ?",
            rows,
        )
    }

    /// As [`Store::rewrap_subject_keys_op`], for system keys.
    pub fn rewrap_system_keys_op(&self, rows: Vec<Rewrapped>) -> WriteOp {
        rewrap_op(
            "UPDATE system_keys SET kek_version = ?, wrapped = ? \
             WHERE name = ? AND version = ? AND kek_version = ?",
            rows,
        )
    }

    /// How many keys each master-key version wraps.
    pub async fn wrapped_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<i64, WrappedCount>, StoreError> {
        let mut out = std::collections::BTreeMap::<i64, WrappedCount>::new();
        let subject: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT kek_version, CAST(count(*) AS BIGINT) FROM subject_keys GROUP BY kek_version",
        )
        .fetch_all(&self.pool)
        .await?;
        for (v, n) in subject {
            out.entry(v).or_default().subject_keys = n;
        }
        let system: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT kek_version, CAST(count(*) AS BIGINT) FROM system_keys GROUP BY kek_version",
        )
        .fetch_all(&self.pool)
        .await?;
        for (v, n) in system {
            out.entry(v).or_default().system_keys = n;
        }
        Ok(out)
    }

    /// Marks master-key `version` destroyed, in the transaction that checks nothing is
    /// wrapped under it any more (`Conflict` if something is) and that it is not the
    /// newest live version (`Conflict` too); tells every node to drop it.
    pub fn destroy_master_key_op(&self, version: i64) -> WriteOp {
        op(move |conn| {
            Box::pin(async move {
                let wrapped: i64 = sqlx::query_scalar(
                    "SELECT (SELECT CAST(count(*) AS BIGINT) FROM subject_keys WHERE kek_version = $1) \
                     + (SELECT CAST(count(*) AS BIGINT) FROM system_keys WHERE kek_version = $1)",
                )
                .bind(version)
                .fetch_one(&mut *conn)
                .await?;
                let newer: i64 = sqlx::query_scalar(
                    "SELECT CAST(count(*) AS BIGINT) FROM master_keys \
                     WHERE version > $1 AND destroyed_at IS NULL",
                )
                .bind(version)
                .fetch_one(&mut *conn)
                .await?;
                if wrapped != 0 || newer == 0 {
                    return Err(StoreError::Conflict);
                }
                let now = now_ms();
                let mut script = Script::new(conn);
                script
                    .sql(
                        "UPDATE master_keys SET destroyed_at = ?, wrapped = NULL \
                         WHERE version = ? AND destroyed_at IS NULL",
                    )
                    .bind(now)
                    .bind(version);
                note_in(&mut script, KEYS, "master", now);
                script.run(conn).await
            })
        })
    }

    /// Adds a version of a system key (a rotation), and tells every node to load it.
    /// `Conflict` if that version exists already (a concurrent rotation).
    pub fn add_system_key_op(&self, row: SystemKeyRow) -> WriteOp {
        op(move |conn| {
            let row = row.clone();
            Box::pin(async move {
                let now = now_ms();
                let mut script = Script::new(conn);
                script
                    .sql(
                        "INSERT INTO system_keys (name, version, kek_version, wrapped, created_at) \
                         VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(row.name)
                    .bind(row.version)
                    .bind(row.kek_version)
                    .bind(row.wrapped)
                    .bind(now);
                note_in(&mut script, KEYS, "master", now);
                script.run(conn).await
            })
        })
    }

    /// Destroys an old version of a system key: its wrapped key is deleted, and every
    /// node drops it. `Conflict` if it is the newest version of its key, or if anything
    /// still depends on it ([`Store::system_key_users`]).
    pub fn destroy_system_key_op(&self, name: &'static str, version: i64, now: i64) -> WriteOp {
        op(move |conn| {
            Box::pin(async move {
                let newer: i64 = sqlx::query_scalar(
                    "SELECT CAST(count(*) AS BIGINT) FROM system_keys WHERE name = $1 AND version > $2",
                )
                .bind(name)
                .bind(version)
                .fetch_one(&mut *conn)
                .await?;
                let users = users_of(conn, name, version, now).await?;
                if newer == 0 || users > 0 {
                    return Err(StoreError::Conflict);
                }
                let gone = sqlx::query("DELETE FROM system_keys WHERE name = $1 AND version = $2")
                    .bind(name)
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
                if gone.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                super::changes::note(conn, KEYS, "master", now).await
            })
        })
    }

    /// What still depends on version `version` of system key `name`: for the token-hash
    /// key, live tokens (neither revoked nor expired at `now`) hashed under it; for the
    /// blind-index key, index entries made under it.
    pub async fn system_key_users(
        &self,
        name: &str,
        version: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        users_of(&mut conn, name, version, now).await
    }

    /// Up to `limit` subjects with a blind-index entry made under a key version older
    /// than `version`, in id order after `after`.
    pub async fn subjects_indexed_before(
        &self,
        version: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT subject_id FROM blind_index WHERE key_version < $1 AND subject_id > $2 \
             ORDER BY subject_id LIMIT $3",
        )
        .bind(version)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tells every node that key `what` changed (`master`: read the master key source
    /// again; `audit`: the audit signing key file), as a change to commit with its
    /// audit event.
    pub fn keys_changed_op(&self, what: &'static str) -> WriteOp {
        op(move |conn| {
            Box::pin(async move {
                let mut script = Script::new(conn);
                note_in(&mut script, KEYS, what, now_ms());
                script.run(conn).await
            })
        })
    }

    /// Sets (or, with `None`, removes) a `vault_meta` entry, as a change to commit
    /// with its audit event.
    pub fn set_meta_op(&self, key: &'static str, value: Option<String>) -> WriteOp {
        op(move |conn| {
            let value = value.clone();
            Box::pin(async move {
                let mut script = Script::new(conn);
                script.sql("DELETE FROM vault_meta WHERE key = ?").bind(key);
                if let Some(v) = value {
                    script
                        .sql("INSERT INTO vault_meta (key, value) VALUES (?, ?)")
                        .bind(key)
                        .bind(v);
                }
                script.run(conn).await
            })
        })
    }
}

fn rewrap_op(update: &'static str, rows: Vec<Rewrapped>) -> WriteOp {
    op(move |conn| {
        let rows = rows.clone();
        Box::pin(async move {
            let mut script = Script::new(conn);
            for r in rows {
                script
                    .sql(update)
                    .bind(r.kek_version)
                    .bind(r.wrapped)
                    .bind(r.name)
                    .bind(r.version)
                    .bind(r.old_kek_version);
            }
            script.run(conn).await
        })
    })
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
    /// Master keys: when it was destroyed (`keys retire`), if it was.
    pub destroyed_at: Option<i64>,
    /// Data keys: how many subjects' keys are at this version and wrapping. Master
    /// keys: how many keys (subject and system) it wraps.
    pub keys: i64,
    /// Values encrypted under them (data keys; 0 where not counted).
    pub encryptions: i64,
    /// Data keys: the field values and records sealed under them now.
    pub items: i64,
    /// Data keys: made before the start of the newest re-encryption (finished or
    /// not), so retired by it, or about to be.
    pub retired: bool,
    /// Data and system keys: the length of the wrapped key (which tells its algorithm).
    pub wrapped_len: i64,
    /// Master keys: the cipher it wraps with, if recorded (else AES-256-GCM).
    pub cipher: Option<String>,
    /// Master keys: held wrapped in the store by an external key source.
    pub external: bool,
}

impl Store {
    /// Every key version the store knows of: master versions (their check values only),
    /// system keys, and data keys counted per version and wrapping master version, and
    /// apart for those made before `retired_before` (ms).
    pub async fn key_inventory(
        &self,
        retired_before: i64,
    ) -> Result<Vec<KeyVersionRow>, StoreError> {
        let row =
            |kind: String, version, wrapped_by, created_at, keys, encryptions| KeyVersionRow {
                kind,
                version,
                wrapped_by,
                created_at,
                destroyed_at: None,
                keys,
                encryptions,
                items: 0,
                retired: false,
                wrapped_len: 0,
                cipher: None,
                external: false,
            };
        let mut out = Vec::new();
        type MasterRow = (i64, i64, Option<i64>, Option<String>, i64);
        let masters: Vec<MasterRow> = sqlx::query_as(
            "SELECT version, created_at, destroyed_at, algorithm, \
             CAST(CASE WHEN wrapped IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM master_keys ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        let wrapped = self.wrapped_counts().await?;
        out.extend(
            masters
                .into_iter()
                .map(|(v, at, destroyed_at, cipher, external)| {
                    let items = wrapped.get(&v).map_or(0, WrappedCount::total);
                    KeyVersionRow {
                        destroyed_at,
                        cipher,
                        external: external != 0,
                        ..row("master".into(), v, None, at, items, 0)
                    }
                }),
        );
        let system: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT name, version, kek_version, created_at, CAST(length(wrapped) AS BIGINT) \
             FROM system_keys ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        out.extend(
            system
                .into_iter()
                .map(|(name, v, kek, at, len)| KeyVersionRow {
                    wrapped_len: len,
                    ..row(name, v, Some(kek), at, 1, 0)
                }),
        );
        type DataRow = (i64, i64, i64, i64, i64, i64, i64, i64);
        let data: Vec<DataRow> = sqlx::query_as(
            "SELECT version, kek_version, retired, CAST(count(*) AS BIGINT), \
                    CAST(COALESCE(sum(encryptions), 0) AS BIGINT), CAST(min(created_at) AS BIGINT), \
                    CAST(COALESCE(sum(items), 0) AS BIGINT), wrapped_len \
             FROM (SELECT k.version, k.kek_version, k.encryptions, k.created_at, \
                          CAST(length(k.wrapped) AS BIGINT) AS wrapped_len, \
                          CASE WHEN k.created_at < $1 THEN 1 ELSE 0 END AS retired, \
                          (SELECT count(*) FROM subject_fields f \
                            WHERE f.subject_id = k.subject_id AND f.dek_version = k.version) \
                          + (SELECT count(*) FROM records r \
                            WHERE r.subject_id = k.subject_id AND r.dek_version = k.version) AS items \
                   FROM subject_keys k) AS d \
             GROUP BY version, kek_version, retired, wrapped_len \
             ORDER BY version, kek_version, retired, wrapped_len",
        )
        .bind(retired_before)
        .fetch_all(&self.pool)
        .await?;
        out.extend(
            data.into_iter()
                .map(|(v, kek, retired, n, enc, at, items, len)| KeyVersionRow {
                    items,
                    retired: retired != 0,
                    wrapped_len: len,
                    ..row("data".into(), v, Some(kek), at, n, enc)
                }),
        );
        Ok(out)
    }
}

async fn users_of(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    version: i64,
    now: i64,
) -> Result<i64, StoreError> {
    let query = match name {
        "token_hash" => sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM tokens \
             WHERE hash_key_version = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(version)
        .bind(now),
        "blind_index" => sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM blind_index WHERE key_version = $1",
        )
        .bind(version),
        _ => return Ok(0),
    };
    Ok(query.fetch_one(&mut *conn).await?)
}
