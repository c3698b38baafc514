//! Pages of a team's messages as PostgreSQL holds them (what the workers synced).

use sqlx::PgPool;

/// Which page: newest first before a seq (or from the newest), or oldest first after one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Before(Option<u64>),
    After(u64),
}

impl Page {
    /// Whether a message with this seq belongs on the page.
    pub fn contains(self, seq: u64) -> bool {
        match self {
            Page::Before(None) => true,
            Page::Before(Some(before)) => seq < before,
            Page::After(after) => seq > after,
        }
    }
}

/// A stored message with its edit and delete state.
#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub seq: i64,
    pub id: String,
    pub client_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub body: String,
    pub meta: Option<serde_json::Value>,
    pub ts: i64,
    pub offset: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// Offset of the newest event applied (edits apply only over older versions).
    pub version: i64,
    pub mentions: Option<Vec<String>>,
    pub attachments: Option<serde_json::Value>,
}

/// Up to `limit` messages of the page, in the page's order (newest first for `Before`).
pub async fn page(
    db: &PgPool,
    team: &str,
    page: Page,
    limit: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    match page {
        Page::Before(before) => {
            sqlx::query_as(
                r#"SELECT seq, id, client_id, user_id, name, body, meta, ts, "offset", edited_at, deleted, version,
                          mentions, attachments
                   FROM messages WHERE team = $1 AND id IS NOT NULL AND ($2::int8 IS NULL OR seq < $2)
                   ORDER BY seq DESC LIMIT $3"#,
            )
            .bind(team)
            .bind(before.map(|b| b as i64))
            .bind(limit)
            .fetch_all(db)
            .await
        }
        Page::After(after) => {
            sqlx::query_as(
                r#"SELECT seq, id, client_id, user_id, name, body, meta, ts, "offset", edited_at, deleted, version,
                          mentions, attachments
                   FROM messages WHERE team = $1 AND id IS NOT NULL AND seq > $2
                   ORDER BY seq ASC LIMIT $3"#,
            )
            .bind(team)
            .bind(after as i64)
            .bind(limit)
            .fetch_all(db)
            .await
        }
    }
}

/// A stored message's author and id, and whether it was deleted: authorizes an edit or a
/// delete of a message older than Redis keeps. `None` for a seq with no stored message
/// (never sent, not synced yet, or only an edit's placeholder).
pub async fn author(db: &PgPool, team: &str, seq: u64) -> sqlx::Result<Option<Author>> {
    sqlx::query_as(
        "SELECT user_id, id, deleted FROM messages
         WHERE team = $1 AND seq = $2 AND id IS NOT NULL AND user_id IS NOT NULL",
    )
    .bind(team)
    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await
}

/// See `author`.
#[derive(Debug, sqlx::FromRow)]
pub struct Author {
    pub user_id: String,
    pub id: String,
    pub deleted: bool,
}
