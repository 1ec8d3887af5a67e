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
    pub fn insert_token_op(&self, t: TokenRow, secret_hash: Vec<u8>) -> WriteOp {
        op(move |conn| {
            let (t, secret_hash) = (t.clone(), secret_hash.clone());
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO tokens (id, secret_hash, role, purposes, description, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(t.id.as_str())
                .bind(secret_hash.as_slice())
                .bind(t.role.as_str())
                .bind(t.purposes.as_str())
                .bind(t.description.as_str())
                .bind(t.created_by.as_str())
                .bind(t.created_at)
                .bind(t.expires_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
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
