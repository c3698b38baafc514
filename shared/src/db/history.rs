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
    pub parent: Option<i64>,
    pub pinned: bool,
    /// The thread's counters (top-level messages with replies).
    pub reply_count: Option<i64>,
    pub last_reply_ts: Option<i64>,
    /// `[{"emoji","count","me"}]`, ordered by first reaction.
    pub reactions: serde_json::Value,
}

/// The columns of a history row; `$me` is the parameter holding the reader's user id
/// (`me` in `reactions`). One statement for the page, with the reactions of each message
/// from its aggregate rows (an index range per message, not a query per message).
fn row_columns(me: &str) -> String {
    format!(
        r#"m.seq, m.id, m.client_id, m.user_id, m.name, m.body, m.meta, m.ts, m."offset",
           m.edited_at, m.deleted, m.version, m.mentions, m.attachments, m.parent,
           m.pinned, th.reply_count, th.last_reply_ts,
           COALESCE((SELECT json_agg(json_build_object('emoji', c.emoji, 'count', c.count, 'me',
                         EXISTS (SELECT 1 FROM reactions r
                                 WHERE r.team = c.team AND r.seq = c.seq AND r.emoji = c.emoji
                                   AND r.user_id = {me}::text AND r.present))
                         ORDER BY c.first_offset, c.emoji)
                     FROM reaction_counts c
                     WHERE c.team = m.team AND c.seq = m.seq AND c.count > 0 AND NOT m.deleted),
                    '[]'::json) AS reactions"#
    )
}

/// Which messages of the team a page lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Thread replies left out.
    TopLevel,
    /// The replies of this top-level message only.
    Replies(u64),
}

impl Scope {
    /// Whether a message with this parent belongs.
    pub fn contains(self, parent: Option<u64>) -> bool {
        match self {
            Scope::All => true,
            Scope::TopLevel => parent.is_none(),
            Scope::Replies(of) => parent == Some(of),
        }
    }
}

/// Up to `limit` messages of the page, in the page's order (newest first for `Before`),
/// with their thread's counters.
pub async fn page(
    db: &PgPool,
    team: &str,
    page: Page,
    scope: Scope,
    limit: i64,
    me: Option<&str>,
) -> sqlx::Result<Vec<MessageRow>> {
    // Each scope its own statement (a generic plan of one for all could not use the
    // replies index).
    let (in_scope, parent) = match scope {
        Scope::All => ("", None),
        Scope::TopLevel => ("AND m.parent IS NULL", None),
        Scope::Replies(parent) => ("AND m.parent = $5", Some(parent as i64)),
    };
    let (bound, order) = match page {
        Page::Before(before) => (before.map(|b| b as i64), "DESC"),
        Page::After(after) => (Some(after as i64), "ASC"),
    };
    let comparison = match page {
        Page::Before(_) => "m.seq < $2",
        Page::After(_) => "m.seq > $2",
    };
    let sql = format!(
        r#"SELECT {columns}
           FROM messages m
           LEFT JOIN threads th ON th.team = m.team AND th.parent = m.seq
           WHERE m.team = $1 AND m.id IS NOT NULL AND ($2::int8 IS NULL OR {comparison})
             {in_scope}
           ORDER BY m.seq {order} LIMIT $3"#,
        columns = row_columns("$4")
    );
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(team)
        .bind(bound)
        .bind(limit)
        .bind(me);
    match parent {
        Some(parent) => query.bind(parent).fetch_all(db).await,
        None => query.fetch_all(db).await,
    }
}

/// The team's pinned messages (deleted ones left out), most recently pinned first (by the
/// pin's offset: the team's order, not a gateway's clock), at most `limit`.
pub async fn pins(
    db: &PgPool,
    team: &str,
    limit: i64,
    me: Option<&str>,
) -> sqlx::Result<Vec<MessageRow>> {
    let sql = format!(
        r#"SELECT {columns}
           FROM messages m
           LEFT JOIN threads th ON th.team = m.team AND th.parent = m.seq
           WHERE m.team = $1 AND m.pinned AND NOT m.deleted AND m.id IS NOT NULL
           ORDER BY m.pin_version DESC LIMIT $2"#,
        columns = row_columns("$3")
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(team)
        .bind(limit)
        .bind(me)
        .fetch_all(db)
        .await
}

/// The seqs of the team's pinned messages, most recently pinned first, at most `limit`.
pub async fn pinned_seqs(db: &PgPool, team: &str, limit: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT seq FROM messages WHERE team = $1 AND pinned AND NOT deleted AND id IS NOT NULL
         ORDER BY pin_version DESC LIMIT $2",
    )
    .bind(team)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A stored message's author and id, and whether it was deleted: authorizes an edit or a
/// delete of a message older than Redis keeps. `None` for a seq with no stored message
/// (never sent, not synced yet, or only an edit's placeholder).
pub async fn author(db: &PgPool, team: &str, seq: u64) -> sqlx::Result<Option<Author>> {
    sqlx::query_as(
        "SELECT user_id, id, deleted, parent FROM messages
         WHERE team = $1 AND seq = $2 AND id IS NOT NULL AND user_id IS NOT NULL",
    )
    .bind(team)
    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await
}

/// The standing reactions of a message, `(user, emoji)`: what the append script checks a
/// reaction against once Redis no longer holds them.
pub async fn reactions_of(
    db: &PgPool,
    team: &str,
    seq: u64,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT user_id, emoji FROM reactions WHERE team = $1 AND seq = $2 AND present")
        .bind(team)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await
}

/// See `author`.
#[derive(Debug, sqlx::FromRow)]
pub struct Author {
    pub user_id: String,
    pub id: String,
    pub deleted: bool,
    /// Set for a thread reply: its parent's seq.
    pub parent: Option<i64>,
}
