//! Rebuilding PostgreSQL from a team's history (`replay`) and writing it out as NDJSON
//! (`export`), both read through `history`: the team stream for what it holds, the event
//! archive for what it no longer does. Replay goes through the same idempotent upserts as
//! the live sync, so it is safe while workers run.

use std::io::{IsTerminal, Write};
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use teamchat_shared::config::{ExportFormat, Timeouts, WorkerConfig};
use teamchat_shared::event::{EventData, StreamEvent};
use teamchat_shared::history::History;
use teamchat_shared::redis_conn::Redis;

use crate::ingest::Entry;
use crate::store::Store;

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub teams: usize,
    pub events: usize,
    /// Offset ranges neither the streams nor the archive held.
    pub missing: Vec<RangeInclusive<u64>>,
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

async fn redis(config: &WorkerConfig) -> anyhow::Result<Redis> {
    config
        .redis
        .connect_direct(Timeouts::default())
        .await
        .context("connecting to Redis")
}

/// A connection to the database whose event archive is read (connected on first use: a
/// range the streams hold needs none).
pub(crate) fn archive(url: &str) -> anyhow::Result<PgPool> {
    let options: sqlx::postgres::PgConnectOptions =
        url.parse().context("parsing the archive's database URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// Teams with a stream under the configured prefix, or with archived events.
async fn all_teams(
    conn: &Redis,
    config: &WorkerConfig,
    archive: &PgPool,
) -> anyhow::Result<Vec<String>> {
    let keys = config.redis.keys();
    let mut found: Vec<String> = Vec::new();
    for key in conn.scan_match(&keys.team_events_pattern()).await? {
        if let Some(team) = keys.team_of_events_key(&key) {
            found.push(team.to_owned());
        }
    }
    // Each team once, by index (a skip scan: the archive may be large).
    let archived: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE t(team) AS (
             (SELECT team FROM events ORDER BY team LIMIT 1)
             UNION ALL
             SELECT (SELECT e.team FROM events e WHERE e.team > t.team ORDER BY e.team LIMIT 1)
             FROM t WHERE t.team IS NOT NULL)
         SELECT team FROM t WHERE team IS NOT NULL",
    )
    .fetch_all(archive)
    .await
    .context("listing the archive's teams")?;
    found.extend(archived);
    found.sort();
    found.dedup();
    Ok(found)
}

/// Rewrites the rows of `team` (or of every team) from their history: the team streams,
/// and the event archive of the database at `archive_url` (by default the one written to)
/// for what the streams no longer hold.
pub async fn replay(
    config: &WorkerConfig,
    team: Option<&str>,
    archive_url: Option<&str>,
) -> anyhow::Result<ReplayStats> {
    let store = Store::connect(
        &config.database_url,
        config.write_concurrency,
        Some(Duration::from_millis(config.statement_timeout_ms)),
    )
    .await?
    .keep_archive_for(config.archive_retention);
    store.migrate().await?;
    let archive = archive(archive_url.unwrap_or(&config.database_url))?;
    let conn = redis(config).await?;
    let teams = match team {
        Some(team) => vec![team.to_owned()],
        None => all_teams(&conn, config, &archive).await?,
    };
    let keys = config.redis.keys();
    let progress = Progress::new();
    let mut stats = ReplayStats::default();
    for team in &teams {
        let mut history = History::new(
            conn.clone(),
            keys.clone(),
            archive.clone(),
            team.clone(),
            1..=u64::MAX,
            config.batch_size,
        );
        while let Some(page) = history.next_page().await? {
            passed_over(team, &page.undecodable);
            if let Some(missing) = &page.missing {
                not_held(team, missing);
                stats.missing.push(missing.clone());
            }
            let last = page
                .events
                .last()
                .map(|e| e.offset)
                .max(page.undecodable.last().copied())
                .or(page.missing.as_ref().map(|m| *m.end()));
            let entries: Vec<Entry> = page.events.into_iter().map(entry).collect();
            store.write_batch(&entries).await?;
            if let Some(last) = last {
                // What neither the stream nor the archive holds is gone: passed, as synced.
                store.mark_synced_through(team, last).await?;
                progress.show(format_args!(
                    "replay {team}: through offset {last} ({} events in all)",
                    stats.events + entries.len()
                ));
            }
            stats.events += entries.len();
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

/// A range of a team's history held nowhere (retention dropped it, or it was lost).
fn not_held(team: &str, missing: &RangeInclusive<u64>) {
    tracing::warn!(
        team,
        from = missing.start(),
        to = missing.end(),
        "offsets held neither by the stream nor by the archive"
    );
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

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub events: usize,
    /// Offset ranges of the export's span that neither the stream nor the archive held.
    pub missing: Vec<RangeInclusive<u64>>,
}

/// What to export: an offset range (from the first offset to the last by default),
/// narrowed to the events of a time window if given, and in which format.
#[derive(Clone, Debug, Default)]
pub struct ExportSpec {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub format: ExportFormat,
}

/// Writes the team's events the spec names, one JSON object per line (`format`), from
/// the stream and, for what it no longer holds, the archive. Ranges held by neither are
/// logged and returned.
pub async fn export(
    config: &WorkerConfig,
    team: &str,
    spec: &ExportSpec,
    out: &mut impl Write,
) -> anyhow::Result<Exported> {
    let archive = archive(&config.database_url)?;
    let conn = redis(config).await?;
    let keys = config.redis.keys();
    let (since, until) = (spec.since.map(millis), spec.until.map(millis));
    // Offsets start at 1; a time window starts at its first archived event.
    let mut from = spec.from.unwrap_or(1).max(1);
    if let Some(since) = since {
        from = from.max(first_since(&archive, team, since).await?);
    }
    let range = from..=spec.to.unwrap_or(u64::MAX);
    let mut history = History::new(conn, keys, archive, team.to_owned(), range, PAGE);
    let progress = Progress::new();
    let mut exported = Exported::default();
    while let Some(page) = history.next_page().await? {
        passed_over(team, &page.undecodable);
        if let Some(missing) = page.missing {
            not_held(team, &missing);
            exported.missing.push(missing);
        }
        for event in &page.events {
            let ts = event.data.ts();
            if since.is_some_and(|since| ts < since) || until.is_some_and(|until| ts > until) {
                continue;
            }
            let line = match spec.format {
                ExportFormat::Ndjson => json!({
                    "team": event.team,
                    "offset": event.offset.to_string(),
                    "kind": event.kind().as_str(),
                    "seq": event.seq,
                    "data": serde_json::from_str::<serde_json::Value>(&event.data.encode())?,
                }),
                ExportFormat::Flat => flat(event),
            };
            writeln!(out, "{line}")?;
            exported.events += 1;
        }
        if let Some(last) = page.events.last() {
            progress.show(format_args!(
                "export {team}: through offset {} ({} events)",
                last.offset, exported.events
            ));
        }
    }
    out.flush()?;
    progress.done();
    Ok(exported)
}

fn millis(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i64,
        Err(before) => -(before.duration().as_millis() as i64),
    }
}

/// The first offset of `team` whose event is at or after `since`: the archive's first
/// such, or past all it holds when none is (the window is in the unsynced tail).
async fn first_since(archive: &PgPool, team: &str, since: i64) -> anyhow::Result<u64> {
    let first: Option<i64> = sqlx::query_scalar(
        r#"SELECT coalesce(
               (SELECT min("offset") FROM events WHERE team = $1 AND at >= to_timestamp($2 / 1000.0)),
               (SELECT max("offset") + 1 FROM events WHERE team = $1))"#,
    )
    .bind(team)
    .bind(since)
    .fetch_one(archive)
    .await
    .context("finding the export's first event in the archive")?;
    Ok(first.unwrap_or(1).max(1) as u64)
}

/// An event as the `flat` format writes it: the same columns for every kind, `null`
/// where the kind has none (docs/operations.md, "Export formats").
fn flat(event: &StreamEvent) -> serde_json::Value {
    let ts = event.data.ts();
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64);
    let mut row = json!({
        "team": event.team,
        "offset": event.offset,
        "kind": event.kind().as_str(),
        "seq": event.seq,
        "user": event.data.user(),
        "ts": ts,
        "at": humantime::format_rfc3339_millis(at).to_string(),
        "cost": event.cost,
        "id": null, "client_id": null, "name": null, "body": null, "meta": null,
        "parent": null, "mentions": null, "attachments": null, "emoji": null,
    });
    match &event.data {
        EventData::Message(m) => {
            row["id"] = json!(m.id);
            row["client_id"] = json!(m.client_id);
            row["name"] = json!(m.name);
            row["body"] = json!(m.body);
            row["meta"] = json!(m.meta);
            row["parent"] = json!(m.parent);
            row["mentions"] = json!(m.mentions);
            row["attachments"] = json!(m.attachments);
        }
        EventData::Edit(e) => row["body"] = json!(e.body),
        EventData::React(r) | EventData::Unreact(r) => row["emoji"] = json!(r.emoji),
        EventData::Delete(_) | EventData::Receipt(_) | EventData::Pin(_) | EventData::Unpin(_) => {}
    }
    row
}

/// Events read per page by export.
const PAGE: usize = 1_000;
