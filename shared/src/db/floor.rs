//! What PostgreSQL already holds of a team, read when the team's Redis counters are set (a
//! new team, or one whose Redis state was lost): the counters go on after it, so no seq or
//! offset is given out twice.

use std::sync::Once;

use sqlx::PgPool;
use tracing::warn;

/// The newest seq and offset PostgreSQL holds for a team, and its sync watermark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub seq: i64,
    pub offset: i64,
    pub watermark: i64,
}

/// Every part is a primary-key lookup, or a scan of one team's receipts. Offsets: the
/// watermark and the offsets synced past it, the credit ledger (kept in the batch's first
/// transaction, which the offsets past the watermark may not have followed yet) and the
/// newest message row; seqs: the newest message and the highest receipt.
const FLOOR: &str = r#"
    WITH w AS (SELECT COALESCE((SELECT synced_offset FROM team_sync WHERE team = $1), 0) AS mark)
    SELECT GREATEST(COALESCE((SELECT max(seq) FROM messages WHERE team = $1), 0),
                    COALESCE((SELECT max(seq) FROM receipts WHERE team = $1), 0)),
           GREATEST(w.mark,
                    COALESCE((SELECT max("offset") FROM synced_ahead WHERE team = $1), 0),
                    COALESCE((SELECT max("offset") FROM credit_ledger WHERE team = $1), 0),
                    COALESCE((SELECT GREATEST("offset", version) FROM messages
                              WHERE team = $1 ORDER BY seq DESC LIMIT 1), 0),
                    COALESCE((SELECT max("offset") FROM receipts WHERE team = $1), 0)),
           w.mark
    FROM w"#;

/// What PostgreSQL holds of `team`; nothing before a worker created the schema.
pub async fn read(db: &PgPool, team: &str) -> sqlx::Result<Floor> {
    let floor: sqlx::Result<(i64, i64, i64)> = sqlx::query_as(FLOOR).bind(team).fetch_one(db).await;
    match floor {
        Ok((seq, offset, watermark)) => Ok(Floor {
            seq,
            offset,
            watermark,
        }),
        // undefined_table: no worker has migrated this database yet (or DATABASE_URL
        // points elsewhere than the workers').
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            // Once per process: every new team would say it again.
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                warn!(
                    team,
                    "no messages table in DATABASE_URL's database: counters start at 0"
                );
            });
            Ok(Floor::default())
        }
        Err(e) => Err(e),
    }
}

/// A message PostgreSQL holds, as its sender's dedupe key remembers it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncedMessage {
    pub user_id: String,
    pub client_id: String,
    pub seq: i64,
    pub offset: i64,
    pub id: String,
    pub ts: i64,
}

/// The messages of `team` synced at offsets past `offset` (at most `MAX_SYNCED_AFTER`):
/// on a promoted replica that holds the team up to `offset`, those the lost master gave out.
pub async fn synced_after(
    db: &PgPool,
    team: &str,
    offset: i64,
) -> sqlx::Result<Vec<SyncedMessage>> {
    sqlx::query_as(
        r#"SELECT user_id, client_id, seq, "offset", id, ts FROM messages
           WHERE team = $1 AND "offset" > $2
             AND user_id IS NOT NULL AND client_id IS NOT NULL AND id IS NOT NULL
           ORDER BY "offset" LIMIT $3"#,
    )
    .bind(team)
    .bind(offset)
    .bind(MAX_SYNCED_AFTER)
    .fetch_all(db)
    .await
}

/// More than a team can append between a master's last replicated write and its death.
const MAX_SYNCED_AFTER: i64 = 10_000;
