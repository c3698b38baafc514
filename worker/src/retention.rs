//! Trimming the team streams. A team stream keeps its newest `STREAM_MAXLEN` events and,
//! with `STREAM_RETENTION`, nothing older than that; but never an event the workers have
//! not synced: below the team's sync watermark every event is in the archive (or
//! dead-lettered), so history, replay and export still reach it. One worker trims at a
//! time (an advisory lock), every `STREAM_TRIM_EVERY_MS`; in the same rounds, with
//! `ARCHIVE_RETENTION`, the event archive's months past it are dropped.

use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use teamchat_shared::config::{Timeouts, WorkerConfig};
use teamchat_shared::keys::Keys;
use teamchat_shared::redis_conn::Redis;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{drop_expired_months, horizon_ms};

/// Trims every `STREAM_TRIM_EVERY_MS` until `shutdown`; a failed round is logged and the
/// next one tries again.
pub async fn run(config: WorkerConfig, pool: PgPool, shutdown: CancellationToken) {
    let mut every =
        tokio::time::interval(Duration::from_millis(config.stream_trim_every_ms.max(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keys = config.redis.keys();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let round = async {
            let redis = config.redis.connect_direct(Timeouts::default()).await?;
            trim(
                &pool,
                &redis,
                &keys,
                config.stream_maxlen,
                config.stream_retention,
            )
            .await?;
            if config.archive_retention.is_some() {
                let horizon = horizon_ms(config.archive_retention);
                let dropped = drop_expired_months(&pool, horizon).await?;
                if !dropped.is_empty() {
                    info!(?dropped, "archive months past ARCHIVE_RETENTION dropped");
                }
            }
            anyhow::Ok(())
        };
        if let Err(error) = round.await {
            warn!(%error, "team streams not trimmed this round");
        }
    }
}

/// One round: each team's stream is trimmed below the first offset it must keep. Returns
/// how many streams were trimmed, or `None` when another worker holds the round.
pub async fn trim(
    pool: &PgPool,
    redis: &Redis,
    keys: &Keys,
    maxlen: u64,
    retention: Option<Duration>,
) -> anyhow::Result<Option<usize>> {
    // Held by the transaction: released however the round ends.
    let mut tx = pool.begin().await?;
    let ours: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('teamchat stream trim'))")
            .fetch_one(&mut *tx)
            .await?;
    if !ours {
        return Ok(None);
    }
    let aged_before = retention.map(|age| {
        let cut = SystemTime::now() - age;
        cut.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    // Per team: the watermark, and the newest archived offset older than the retention.
    let teams: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        r#"SELECT s.team, s.synced_offset,
                  CASE WHEN $1::int8 IS NOT NULL THEN
                      (SELECT max(e."offset") FROM events e
                       WHERE e.team = s.team AND e.at < to_timestamp($1 / 1000.0)) END
           FROM team_sync s"#,
    )
    .bind(aged_before)
    .fetch_all(&mut *tx)
    .await?;
    if teams.is_empty() {
        return Ok(Some(0));
    }
    let reads = teams.iter().map(|(team, _, _)| {
        let mut read = redis::cmd("HGET");
        read.arg(keys.team_meta(team)).arg("offset");
        read
    });
    let tops: Vec<Option<u64>> = redis.each(reads.collect()).await?;
    let mut trims = Vec::new();
    for ((team, synced, aged), top) in teams.iter().zip(tops) {
        let keep = keep_from(top.unwrap_or(0), maxlen, *aged, *synced);
        if keep > 1 {
            let mut trim = redis::cmd("XTRIM");
            trim.arg(keys.team_events(team))
                .arg("MINID")
                .arg(format!("{keep}-0"));
            trims.push(trim);
        }
    }
    let trimmed = trims.len();
    if trimmed > 0 {
        redis.each::<redis::Value>(trims).await?;
    }
    tx.commit().await?;
    Ok(Some(trimmed))
}

/// The first offset a team's stream keeps: past the newest `maxlen` and past what
/// `aged` (the newest offset older than the retention) names, but never past the
/// watermark `synced`.
fn keep_from(top: u64, maxlen: u64, aged: Option<i64>, synced: i64) -> u64 {
    let by_count = top.saturating_sub(maxlen) + 1;
    let by_age = aged.map_or(1, |offset| offset.max(0) as u64 + 1);
    by_count.max(by_age).min(synced.max(0) as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::keep_from;

    #[test]
    fn never_past_the_watermark() {
        // The newest 100 of 1,000, all synced.
        assert_eq!(keep_from(1_000, 100, None, 1_000), 901);
        // Only 500 synced: what is not stays, however many.
        assert_eq!(keep_from(1_000, 100, None, 500), 501);
        // Older than the retention up to 950: more goes than the count says.
        assert_eq!(keep_from(1_000, 100, Some(950), 1_000), 951);
        assert_eq!(keep_from(1_000, 100, Some(950), 700), 701);
        // Fewer events than kept, nothing synced: nothing to trim.
        assert_eq!(keep_from(50, 100, None, 0), 1);
    }
}
