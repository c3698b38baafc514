//! `GET /v1/me/unread`: per team, the newest message seq, the user's read position, how
//! many messages above it are by others and not deleted, and how many of those mention
//! the user. Every count is an index range above the read position (`newest - read`
//! less the deleted and the user's own there; the mentions table), never a scan of the
//! team's history, so its cost stays flat as history grows (migration 0008).

use sqlx::PgPool;

/// One team's counts, as the workers synced them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Unread {
    pub team: String,
    pub seq: i64,
    pub read: i64,
    pub unread: i64,
    pub mentions: i64,
}

/// The counts of `user` in each of `teams`, in their order.
pub async fn counts(db: &PgPool, user: &str, teams: &[String]) -> sqlx::Result<Vec<Unread>> {
    sqlx::query_as(
        r#"SELECT t.team, top.seq, pos.read,
                  GREATEST(top.seq - pos.read - deleted.n - mine.n, 0) AS unread,
                  mentioned.n AS mentions
           FROM UNNEST($1::text[]) WITH ORDINALITY AS t(team, i)
           CROSS JOIN LATERAL (
               SELECT COALESCE(max(seq), 0) AS seq FROM messages m
               WHERE m.team = t.team AND m.id IS NOT NULL) top
           CROSS JOIN LATERAL (
               SELECT COALESCE((SELECT seq FROM receipts r WHERE r.team = t.team AND r.user_id = $2), 0)
                      AS read) pos
           CROSS JOIN LATERAL (
               SELECT count(*) AS n FROM messages m
               WHERE m.team = t.team AND m.deleted AND m.seq > pos.read AND m.seq <= top.seq) deleted
           CROSS JOIN LATERAL (
               SELECT count(*) AS n FROM messages m
               WHERE m.team = t.team AND m.user_id = $2 AND m.seq > pos.read AND NOT m.deleted) mine
           CROSS JOIN LATERAL (
               SELECT count(*) AS n FROM mentions mn
               JOIN messages m ON m.team = mn.team AND m.seq = mn.seq
               WHERE mn.team = t.team AND mn.user_id = $2 AND mn.seq > pos.read
                 AND NOT m.deleted AND m.user_id <> $2) mentioned
           ORDER BY t.i"#,
    )
    .bind(teams)
    .bind(user)
    .fetch_all(db)
    .await
}
