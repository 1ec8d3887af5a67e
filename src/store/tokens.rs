use sqlx::Row;

use super::write::op;
use super::{changes, now_ms, Store, StoreError, WriteOp};

/// A bearer token as stored: never the secret, only its keyed hash.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub role: String,
    /// JSON array of purpose names.
    pub purposes: String,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

type RawToken = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

fn from_raw(r: RawToken) -> TokenRow {
    TokenRow {
        id: r.0,
        role: r.1,
        purposes: r.2,
        description: r.3,
        created_by: r.4,
        created_at: r.5,
        expires_at: r.6,
        revoked_at: r.7,
    }
}

const COLUMNS: &str =
    "id, role, purposes, description, created_by, created_at, expires_at, revoked_at";

impl Store {
    /// Storing a new token (its secret only as a keyed hash).
    /// `secret_hash` is the keyed hash and the token-hash key version that made it.
    pub fn insert_token_op(&self, t: TokenRow, secret_hash: (i64, Vec<u8>)) -> WriteOp {
        op(move |conn| {
            let (t, (hash_version, secret_hash)) = (t.clone(), secret_hash.clone());
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO tokens (id, secret_hash, role, purposes, description, created_by, created_at, expires_at, hash_key_version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(t.id.as_str())
                .bind(secret_hash.as_slice())
                .bind(t.role.as_str())
                .bind(t.purposes.as_str())
                .bind(t.description.as_str())
                .bind(t.created_by.as_str())
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(hash_version)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
    }

    /// Moves a token to a newer token-hash key: its hash under `old` replaced by
    /// `new` (made from the secret it was just presented with). Nothing changes if
    /// another node moved it first.
    pub fn rehash_token_op(&self, id: &str, old: Vec<u8>, new: (i64, Vec<u8>)) -> WriteOp {
        let id = id.to_owned();
        op(move |conn| {
            let (id, old, (version, new)) = (id.clone(), old.clone(), new.clone());
            Box::pin(async move {
                sqlx::query(
                    "UPDATE tokens SET secret_hash = $1, hash_key_version = $2 WHERE id = $3 AND secret_hash = $4",
                )
                .bind(new)
                .bind(version)
                .bind(id)
                .bind(old)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
    }

    /// Tokens per token-hash key version: `(version, live, all)`, where live ones are
    /// neither revoked nor expired at `now`.
    pub async fn tokens_per_hash_key(&self, now: i64) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT hash_key_version, \
                    CAST(COALESCE(sum(CASE WHEN revoked_at IS NULL AND expires_at > $1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                    CAST(count(*) AS BIGINT) \
             FROM tokens GROUP BY hash_key_version ORDER BY hash_key_version",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The token whose keyed secret hash is `secret_hash`, with that hash.
    pub async fn token_by_hash(
        &self,
        secret_hash: &[u8],
    ) -> Result<Option<(TokenRow, Vec<u8>)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, secret_hash FROM tokens WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let raw: RawToken = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
        );
        Ok(Some((from_raw(raw), r.try_get(8)?)))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows: Vec<RawToken> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(from_raw).collect())
    }

    /// Revoking a token; `NotFound` if no unrevoked token has that id.
    pub fn revoke_token_op(&self, id: &str) -> WriteOp {
        let id = id.to_owned();
        op(move |conn| {
            let id = id.clone();
            Box::pin(async move {
                let now = now_ms();
                let done = sqlx::query(
                    "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::NotFound);
                }
                changes::note(conn, changes::TOKEN, &id, now).await
            })
        })
    }
}
