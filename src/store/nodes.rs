//! The serving nodes and the master-key versions each has loaded (see `keys::nodes`).

use super::write::op;
use super::{Store, StoreError};

/// One serving node as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    pub id: String,
    pub host: String,
    pub listen: String,
    pub pid: i64,
    pub started_at: i64,
    pub seen_at: i64,
    /// Comma-separated master-key versions loaded.
    pub master_versions: String,
    /// Comma-separated blind-index key versions loaded.
    pub blind_versions: String,
}

impl Store {
    /// Records that a node is alive with these versions loaded (a write of its own,
    /// outside the audit trail: it describes the node, not a change to anyone's data).
    pub async fn heartbeat(&self, node: NodeRow) -> Result<(), StoreError> {
        self.transact(op(move |conn| {
            let n = node.clone();
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO nodes (id, host, listen, pid, started_at, seen_at, master_versions, blind_versions) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
                     seen_at = excluded.seen_at, master_versions = excluded.master_versions, \
                     blind_versions = excluded.blind_versions",
                )
                .bind(n.id)
                .bind(n.host)
                .bind(n.listen)
                .bind(n.pid)
                .bind(n.started_at)
                .bind(n.seen_at)
                .bind(n.master_versions)
                .bind(n.blind_versions)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Forgets a node (it stopped), and nodes not seen since `before` (ms).
    pub async fn forget_nodes(&self, id: &str, before: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.transact(op(move |conn| {
            let id = id.clone();
            Box::pin(async move {
                sqlx::query("DELETE FROM nodes WHERE id = $1 OR seen_at < $2")
                    .bind(id)
                    .bind(before)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Nodes seen at or after `since` (ms).
    pub async fn nodes_seen_since(&self, since: i64) -> Result<Vec<NodeRow>, StoreError> {
        type Row = (String, String, String, i64, i64, i64, String, String);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, host, listen, pid, started_at, seen_at, master_versions, blind_versions \
             FROM nodes WHERE seen_at >= $1 ORDER BY id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, host, listen, pid, started_at, seen_at, master_versions, blind_versions)| {
                    NodeRow {
                        id,
                        host,
                        listen,
                        pid,
                        started_at,
                        seen_at,
                        master_versions,
                        blind_versions,
                    }
                },
            )
            .collect())
    }
}
