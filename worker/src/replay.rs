//! Rebuilding PostgreSQL from the team streams (`replay`) and writing a team's stream out
//! as NDJSON (`export`). Replay goes through the same idempotent upserts as the live sync,
//! so it is safe while workers run.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use redis::AsyncCommands;
use serde_json::json;
use teamchat_shared::config::WorkerConfig;
use teamchat_shared::event::StreamEvent;
use teamchat_shared::stream;

use crate::ingest::Entry;
use crate::store::Store;

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub teams: usize,
    pub events: usize,
}

/// Progress on stderr, only when it is a terminal.
struct Progress {
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            shown: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, line: std::fmt::Arguments) {
        if self.shown {
            eprint!("\r\x1b[2K{line}");
        }
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

async fn redis(config: &WorkerConfig) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = config.redis.client()?;
    client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")
}

/// Teams with a stream under the configured prefix.
async fn all_teams(
    conn: &mut redis::aio::MultiplexedConnection,
    config: &WorkerConfig,
) -> anyhow::Result<Vec<String>> {
    let keys = config.redis.keys();
    let mut found: Vec<String> = Vec::new();
    let mut iter: redis::AsyncIter<String> = conn.scan_match(keys.team_events_pattern()).await?;
    while let Some(key) = iter.next_item().await {
        let key = key?;
        if let Some(team) = keys.team_of_events_key(&key) {
            found.push(team.to_owned());
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Rewrites the rows of `team` (or of every team) from what the team streams hold.
pub async fn replay(config: &WorkerConfig, team: Option<&str>) -> anyhow::Result<ReplayStats> {
    let store = Store::connect(
        &config.database_url,
        config.write_concurrency,
        Some(Duration::from_millis(config.statement_timeout_ms)),
    )
    .await?;
    store.migrate().await?;
    let mut conn = redis(config).await?;
    let teams = match team {
        Some(team) => vec![team.to_owned()],
        None => all_teams(&mut conn, config).await?,
    };
    let keys = config.redis.keys();
    let progress = Progress::new();
    let mut stats = ReplayStats::default();
    for team in &teams {
        let mut from = 0;
        loop {
            let page = stream::read_page(
                &mut conn,
                &keys,
                team,
                from,
                u64::MAX,
                config.batch_size.max(1),
            )
            .await?;
            let Some(last) = page.last_offset() else {
                break;
            };
            passed_over(team, &page.undecodable);
            let entries: Vec<Entry> = page.events.into_iter().map(entry).collect();
            store.write_batch(&entries).await?;
            store.mark_synced_through(team, last).await?;
            stats.events += entries.len();
            progress.show(format_args!(
                "replay {team}: through offset {last} ({} events in all)",
                stats.events
            ));
            from = last + 1;
        }
        stats.teams += 1;
    }
    progress.done();
    Ok(stats)
}

/// Entries of a team stream that cannot be decoded are passed over, each logged.
fn passed_over(team: &str, offsets: &[u64]) {
    for offset in offsets {
        tracing::error!(team, offset, "undecodable stream entry passed over");
    }
}

fn entry(event: StreamEvent) -> Entry {
    Entry {
        stream: "replay".into(),
        id: format!("{}-0", event.offset),
        position: Some((event.team.clone(), event.offset)),
        fields: Vec::new(),
        deliveries: 1,
        event: Ok(event),
    }
}

/// Writes the team's events with offsets in `from..=to` as NDJSON, one per line:
/// `{"team","offset","kind","seq","data"}`; returns how many.
pub async fn export(
    config: &WorkerConfig,
    team: &str,
    from: Option<u64>,
    to: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let mut conn = redis(config).await?;
    let keys = config.redis.keys();
    let (mut next, to) = (from.unwrap_or(0), to.unwrap_or(u64::MAX));
    let progress = Progress::new();
    let mut written = 0;
    while next <= to {
        let page = stream::read_page(&mut conn, &keys, team, next, to, stream::PAGE).await?;
        let Some(last) = page.last_offset() else {
            break;
        };
        passed_over(team, &page.undecodable);
        for event in &page.events {
            let data: serde_json::Value = serde_json::from_str(&event.data.encode())?;
            let line = json!({
                "team": event.team,
                "offset": event.offset.to_string(),
                "kind": event.kind().as_str(),
                "seq": event.seq,
                "data": data,
            });
            writeln!(out, "{line}")?;
        }
        written += page.events.len();
        progress.show(format_args!(
            "export {team}: through offset {last} ({written} events)"
        ));
        next = last + 1;
    }
    out.flush()?;
    progress.done();
    Ok(written)
}
