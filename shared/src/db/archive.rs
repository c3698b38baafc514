//! Reads of the event archive (`events`, migrations/0009) the gateway serves: a message's
//! versions. The workers write the archive (`worker/src/store/archive.rs`).

use sqlx::PgPool;

/// A `message`, `edit` or `delete` event of one message, as archived.
#[derive(Debug, sqlx::FromRow)]
pub struct Version {
    pub offset: i64,
    pub kind: String,
    pub user_id: String,
    /// The event's data as JSON text.
    pub data: String,
}

/// The archived message, edit and delete events of `team`'s message `seq`, oldest first.
pub async fn versions(db: &PgPool, team: &str, seq: i64) -> sqlx::Result<Vec<Version>> {
    sqlx::query_as(
        r#"SELECT "offset", kind, user_id, data::text AS data FROM events
           WHERE team = $1 AND seq = $2 AND kind IN ('message', 'edit', 'delete')
           ORDER BY "offset""#,
    )
    .bind(team)
    .bind(seq)
    .fetch_all(db)
    .await
}

/// Whether PostgreSQL shows `team`'s message `seq` deleted (`None`: no such row).
pub async fn deleted(db: &PgPool, team: &str, seq: i64) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT deleted FROM messages WHERE team = $1 AND seq = $2 AND id IS NOT NULL",
    )
    .bind(team)
    .bind(seq)
    .fetch_optional(db)
    .await
}
