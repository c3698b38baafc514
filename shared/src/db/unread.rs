//! `GET /v1/me/unread`: per team, the newest message seq, the user's read position, how
//! many messages above it are by others and not deleted, and how many of those mention
//! the user. Nothing scans a team's history: the messages above the read position are
//! `newest - read`, less the deleted ones and the user's own there, and each of those
//! counts (and the mentions) is the rest of the read position's 256-seq block (a scan of
//! at most 256 messages) plus the counts the worker keeps per block and per 65,536-seq
//! block above it (`unread_counts`, migration 0008). Its cost stays flat as history grows.

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
        r#"WITH pos AS (
               SELECT t.team, t.i,
                      -- (A deleted placeholder proves its seq was given out too.)
                      (SELECT COALESCE(max(m.seq), 0) FROM messages m
                       WHERE m.team = t.team AND (m.id IS NOT NULL OR m.deleted)) AS top,
                      COALESCE((SELECT r.seq FROM receipts r
                                WHERE r.team = t.team AND r.user_id = $2), 0) AS read
               FROM UNNEST($1::text[]) WITH ORDINALITY AS t(team, i)),
           -- The rest of the read position's block, message by message (every lookup here
           -- is correlated, so each is an index range, never a join over a whole table).
           partial AS (
               SELECT p.team, x.*
               FROM pos p
               CROSS JOIN LATERAL (
                   SELECT count(*) FILTER (WHERE m.deleted) AS deleted,
                          count(*) FILTER (WHERE NOT m.deleted AND m.user_id = $2) AS mine,
                          count(*) FILTER (WHERE NOT m.deleted AND m.user_id <> $2
                                             AND $2 = ANY (m.mentions)) AS mentions
                   FROM messages m
                   WHERE m.team = p.team AND m.seq > p.read
                     AND m.seq <= LEAST(p.top, (((p.read >> 8) + 1) << 8) - 1)) x),
           -- The blocks above it: level 0 up to the end of the read position's level-1
           -- block, level 1 after it (each an index range of its own).
           blocks AS (
               SELECT p.team, k.kind,
                      COALESCE((SELECT sum(u.n) FROM unread_counts u
                                WHERE u.team = p.team AND u.kind = k.kind AND u.user_id = k.user_id
                                  AND u.level = 0 AND u.bucket > (p.read >> 8)
                                  AND u.bucket < (((p.read >> 16) + 1) << 8)), 0)
                    + COALESCE((SELECT sum(u.n) FROM unread_counts u
                                WHERE u.team = p.team AND u.kind = k.kind AND u.user_id = k.user_id
                                  AND u.level = 1 AND u.bucket > (p.read >> 16)), 0) AS n
               FROM pos p
               CROSS JOIN (VALUES ('d'::"char", ''::text), ('m'::"char", $2), ('@'::"char", $2))
                   AS k(kind, user_id)),
           totals AS (
               SELECT p.team, p.i, p.top, p.read,
                      COALESCE(pa.deleted, 0) + COALESCE(sum(b.n) FILTER (WHERE b.kind = 'd'), 0) AS deleted,
                      COALESCE(pa.mine, 0) + COALESCE(sum(b.n) FILTER (WHERE b.kind = 'm'), 0) AS mine,
                      COALESCE(pa.mentions, 0) + COALESCE(sum(b.n) FILTER (WHERE b.kind = '@'), 0) AS mentions
               FROM pos p
               LEFT JOIN partial pa ON pa.team = p.team
               LEFT JOIN blocks b ON b.team = p.team
               GROUP BY p.team, p.i, p.top, p.read, pa.deleted, pa.mine, pa.mentions)
           SELECT team, top AS seq, read,
                  GREATEST(top - read - deleted - mine, 0)::int8 AS unread,
                  GREATEST(mentions, 0)::int8 AS mentions
           FROM totals ORDER BY i"#,
    )
    .bind(teams)
    .bind(user)
    .fetch_all(db)
    .await
}
