//! Reads of the event archive (`events`, migrations/0009): a team's events by offset
//! (`history`), a message's versions. The workers write it (`worker/src/store/archive.rs`).

use sqlx::PgPool;

use crate::event::{EventData, EventKind, StreamEvent};

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

/// The archived events of `team` with offsets in `from..=to`, at most `limit`, in offset
/// order. `src` is not archived: it comes back empty.
pub async fn read_page(
    pool: &PgPool,
    team: &str,
    from: u64,
    to: u64,
    limit: usize,
) -> anyhow::Result<Vec<StreamEvent>> {
    let to = to.min(i64::MAX as u64) as i64;
    let rows: Vec<(i64, String, i64, i64, String)> = sqlx::query_as(
        r#"SELECT "offset", kind, seq, cost, data::text FROM events
           WHERE team = $1 AND "offset" BETWEEN $2 AND $3 ORDER BY "offset" LIMIT $4"#,
    )
    .bind(team)
    .bind(from.min(i64::MAX as u64) as i64)
    .bind(to)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(offset, kind, seq, cost, data)| {
            let kind = EventKind::parse(&kind)
                .ok_or_else(|| anyhow::anyhow!("archived event {team}/{offset}: kind {kind}"))?;
            Ok(StreamEvent {
                team: team.to_owned(),
                offset: offset as u64,
                seq: seq as u64,
                src: String::new(),
                data: EventData::decode(kind, data.as_bytes())?,
                cost: cost as u64,
            })
        })
        .collect()
}
