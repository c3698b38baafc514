//! The event archive (`events`, migrations/0009): the columns a batch adds to it, and the
//! monthly partitions those need (reads are in `shared/src/db/archive.rs`).

use std::borrow::Cow;
use std::sync::Mutex;

use sqlx::PgPool;
use teamchat_shared::event::StreamEvent;

use crate::ingest::Entry;

/// The latest time PostgreSQL's `to_timestamp` and the partitions are asked to hold
/// (9999-12-31): an event's time outside 0..=this is archived at the nearest end.
const LAST_MS: i64 = 253_402_300_799_999;

/// An event's time in milliseconds as the archive files it.
fn archived_ms(ts: i64) -> i64 {
    ts.clamp(0, LAST_MS)
}

/// The time (milliseconds) before which events are not archived: `retention` ago, or the
/// beginning of time.
pub fn horizon_ms(retention: Option<std::time::Duration>) -> i64 {
    let Some(retention) = retention else {
        return i64::MIN;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(retention).as_millis() as i64
}

/// Drops the archive's months that ended a day or more before `horizon_ms` (the day
/// covers clocks that disagree: no worker still archives an event of them, since each
/// skips events older than its own horizon). Returns the partitions dropped.
pub async fn drop_expired_months(pool: &PgPool, horizon_ms: i64) -> sqlx::Result<Vec<String>> {
    let expired: Vec<String> = sqlx::query_scalar(
        r#"SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
             AND to_date(substr(c.relname, 8), 'YYYY_MM') + interval '1 month'
                 <= (to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC') - interval '1 day'
           ORDER BY 1"#,
    )
    .bind(horizon_ms)
    .fetch_all(pool)
    .await?;
    for name in &expired {
        // The name matched the pattern above: nothing in it needs quoting.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
            .execute(pool)
            .await?;
    }
    Ok(expired)
}

/// The batch's events, column by column, for one UNNEST insert.
#[derive(Default)]
pub(super) struct ArchiveColumns<'a> {
    pub(super) team: Vec<&'a str>,
    pub(super) offset: Vec<i64>,
    pub(super) ts: Vec<i64>,
    pub(super) kind: Vec<&'static str>,
    pub(super) seq: Vec<i64>,
    pub(super) user_id: Vec<&'a str>,
    pub(super) cost: Vec<i64>,
    pub(super) data: Vec<Cow<'a, str>>,
}

impl<'a> ArchiveColumns<'a> {
    pub(super) fn push(&mut self, entry: &'a Entry, event: &'a StreamEvent) {
        self.team.push(&event.team);
        self.offset.push(event.offset as i64);
        self.ts.push(archived_ms(event.data.ts()));
        self.kind.push(event.kind().as_str());
        self.seq.push(event.seq as i64);
        self.user_id.push(event.data.user());
        self.cost.push(event.cost as i64);
        // The entry's own `d` as read (it decoded, so it is JSON); encoded again only
        // for events that come without their fields (replay).
        let raw = entry
            .fields
            .iter()
            .find(|(name, _)| name == "d")
            .and_then(|(_, value)| std::str::from_utf8(value).ok());
        self.data.push(match raw {
            Some(raw) => Cow::Borrowed(raw),
            None => Cow::Owned(event.data.encode()),
        });
    }
}

/// The archive's partitions this worker knows exist, as millisecond ranges
/// `[from, until)`: a batch whose events all fall inside them costs no extra statement.
#[derive(Default)]
pub struct Partitions {
    known: Mutex<Vec<(i64, i64)>>,
}

impl Partitions {
    fn covers(&self, ms: i64) -> bool {
        let known = self.known.lock().expect("partitions lock");
        known
            .iter()
            .any(|(from, until)| (*from..*until).contains(&ms))
    }

    /// Makes sure a partition holds each of `times` (milliseconds, as archived), creating
    /// the missing ones and the month after each, ahead of time.
    pub(super) async fn ensure(
        &self,
        pool: &PgPool,
        times: impl IntoIterator<Item = i64>,
    ) -> sqlx::Result<()> {
        for ms in times {
            if self.covers(ms) {
                continue;
            }
            let (_, until) = self.create(pool, ms).await?;
            if until <= LAST_MS && !self.covers(until) {
                self.create(pool, until).await?;
            }
        }
        Ok(())
    }

    /// The partition holding `ms`, created if missing; returns its range.
    async fn create(&self, pool: &PgPool, ms: i64) -> sqlx::Result<(i64, i64)> {
        let range: (i64, i64) = sqlx::query_as(
            "SELECT (extract(epoch FROM lower(r)) * 1000)::int8, (extract(epoch FROM upper(r)) * 1000)::int8
             FROM events_partition_for(to_timestamp($1 / 1000.0)) AS r",
        )
        .bind(ms)
        .fetch_one(pool)
        .await?;
        self.known.lock().expect("partitions lock").push(range);
        Ok(range)
    }
}
