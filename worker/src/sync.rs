//! The sync loop: pending entries of this consumer first, then a reader task hands batches
//! to up to `WRITE_CONCURRENCY` writers. Each batch is written in one transaction and
//! acked after its COMMIT; transient PostgreSQL errors are retried with backoff and
//! jitter, a batch PostgreSQL refuses is halved until the entry at fault is found, and
//! that entry (or one delivered too often) is dead-lettered so its neighbours still land.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use teamchat_shared::config::WorkerConfig;
use teamchat_shared::db;
use teamchat_shared::event::EventKind;
use teamchat_shared::metrics as m;
use teamchat_shared::runtime::now_ms;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ingest::{Entry, Ingest};
use crate::store::{self, Store};

/// One connection's worth of syncing: returns Ok on shutdown, Err on a Redis error.
pub(crate) async fn sync(
    config: &WorkerConfig,
    store: &Store,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut ingest = Ingest::connect(config).await?;
    ingest.ensure_groups().await?;
    info!(consumer = %config.consumer, group = %config.group, "worker syncing");

    // Entries delivered to this consumer before a crash come first, one read at a time
    // (a read of pending entries returns those still being written too).
    while !shutdown.is_cancelled() {
        let batch = ingest.read_own_pending().await?;
        if batch.is_empty() {
            break;
        }
        if !store_batch(config, store, &mut ingest, &batch, shutdown).await? {
            return Ok(());
        }
    }

    // Then reading overlaps writing: a reader task on its own connection (its blocking
    // reads must not hold up acks, and decoding a read must not hold up the writes) hands
    // over batches, and up to WRITE_CONCURRENCY of them are written at any time.
    let reader = Ingest::connect(config).await?;
    // Room for a whole read (a batch per shard) besides the batches being written, so
    // the next read is under way while this one's batches wait for a writer.
    let queued = config.redis.shards as usize + config.write_concurrency as usize;
    let (batches, received) = tokio::sync::mpsc::channel(queued);
    let reading = tokio::spawn(read_batches(
        config.clone(),
        reader,
        batches,
        shutdown.clone(),
    ));
    let written = write_batches(config, store, &mut ingest, received, shutdown).await;
    // The reader stops at its next send (the receiver is gone) or at shutdown.
    let read = reading.await.context("the ingest reader panicked")?;
    written.and(read)
}

/// Reads new entries (and, every half `CLAIM_IDLE_MS`, entries idle on dead consumers)
/// until shutdown, handing them to the writers in batches of BATCH_SIZE. A read is not
/// raced against shutdown: once Redis answered, the entries are delivered to this
/// consumer and must be written and acked; the read returns within BATCH_WAIT_MS anyway.
async fn read_batches(
    config: WorkerConfig,
    mut ingest: Ingest,
    batches: tokio::sync::mpsc::Sender<Vec<Entry>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut last_claim = Instant::now();
    let claim_every = Duration::from_millis(config.claim_idle_ms.max(1_000) / 2);
    let batch_size = config.batch_size.max(1);
    while !shutdown.is_cancelled() {
        let mut entries = if last_claim.elapsed() >= claim_every {
            last_claim = Instant::now();
            let claimed = ingest.claim_idle().await?;
            metrics::counter!(m::RECLAIMED).increment(claimed.len() as u64);
            claimed
        } else {
            let mut read = ingest.read_new().await?;
            // Light load: what arrives meanwhile goes in the same transactions.
            if config.batch_linger_ms > 0 && !read.is_empty() && read.len() < batch_size / 2 {
                tokio::time::sleep(Duration::from_millis(config.batch_linger_ms)).await;
                read.extend(ingest.read_new().await?);
            }
            read
        };
        // A read holds up to BATCH_SIZE entries per shard.
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(batch_size));
            if batches.send(entries).await.is_err() {
                return Ok(());
            }
            entries = rest;
        }
    }
    Ok(())
}

/// Writes the batches the reader hands over, up to WRITE_CONCURRENCY at once (writes
/// commute; rows are locked in one order), acking each after its COMMIT, until the reader
/// stops. Stops early when shutdown came while PostgreSQL was failing: what was not
/// written stays pending. Also trims the ingest streams now and then.
async fn write_batches(
    config: &WorkerConfig,
    store: &Store,
    ingest: &mut Ingest,
    mut received: tokio::sync::mpsc::Receiver<Vec<Entry>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut writes = FuturesUnordered::new();
    let mut reading = true;
    // Set when the writer must stop: the writes in flight still finish (a write dropped
    // halfway could leave its connection inside a transaction), unacked.
    let mut stopping: Option<anyhow::Result<()>> = None;
    // Also while idle, so the last entries acked are trimmed and the gauges stay current.
    let mut trim = tokio::time::interval(Duration::from_millis(config.trim_every_ms.max(1)));
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    trim.reset();
    loop {
        let taking = reading && stopping.is_none();
        tokio::select! {
            batch = received.recv(), if taking && writes.len() < config.write_concurrency as usize => {
                match batch {
                    Some(batch) => writes.push(write_chunk(store, batch, config.max_deliveries, shutdown)),
                    None => reading = false,
                }
            }
            Some((batch, written)) = writes.next() => {
                if stopping.is_some() {
                    continue;
                }
                let Some(dead) = written else {
                    // Shutdown while PostgreSQL fails: the rest stays pending.
                    stopping = Some(Ok(()));
                    continue;
                };
                if let Err(e) = acknowledge(ingest, &batch, dead).await {
                    stopping = Some(Err(e));
                }
            }
            _ = trim.tick(), if taking => {
                let trimmed = ingest.trim_acked().await;
                match trimmed {
                    Ok(pending) => metrics::gauge!(m::PENDING_ENTRIES).set(pending as f64),
                    Err(e) => stopping = Some(Err(e)),
                }
                match unsynced_credits(ingest, store).await {
                    Ok(unsynced) => metrics::gauge!(m::UNSYNCED_CREDITS).set(unsynced as f64),
                    Err(e) => warn!(error = %e, "unsynced credits not measured"),
                }
            }
            else => return stopping.unwrap_or(Ok(())),
        }
    }
}

/// Writes a read's entries and acks each batch after its COMMIT, WRITE_CONCURRENCY
/// batches at once. False when shutdown came while PostgreSQL was failing: what was not
/// written stays pending.
async fn store_batch(
    config: &WorkerConfig,
    store: &Store,
    ingest: &mut Ingest,
    batch: &[Entry],
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut chunks = batch.chunks(config.batch_size.max(1));
    let mut writes = FuturesUnordered::new();
    let mut stopped = false;
    // After a Redis error the writes in flight still finish (see write_batches), unacked.
    let mut failed = None;
    loop {
        while !stopped
            && failed.is_none()
            && writes.len() < config.write_concurrency as usize
            && let Some(chunk) = chunks.next()
        {
            writes.push(write_chunk(store, chunk, config.max_deliveries, shutdown));
        }
        let Some((chunk, written)) = writes.next().await else {
            break;
        };
        let Some(dead) = written else {
            stopped = true;
            continue;
        };
        if failed.is_some() {
            continue;
        }
        failed = acknowledge(ingest, chunk, dead).await.err();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(!stopped),
    }
}

/// Acknowledges a written batch: its dead letters (by index in the batch) are published on
/// the dead-letter stream first, so none leaves the pending list unseen; then every entry
/// is acked.
async fn acknowledge(
    ingest: &mut Ingest,
    batch: &[Entry],
    dead: Vec<(usize, String)>,
) -> anyhow::Result<()> {
    let dead: Vec<(&Entry, String)> = dead
        .into_iter()
        .map(|(i, error)| (&batch[i], error))
        .collect();
    ingest.publish_dead_letters(&dead).await?;
    ingest.ack(batch).await
}

/// `write`, returning the batch with its outcome (for the ack): the dead-lettered
/// entries by their index in the batch.
async fn write_chunk<B: std::ops::Deref<Target = [Entry]>>(
    store: &Store,
    batch: B,
    max_deliveries: u64,
    shutdown: &CancellationToken,
) -> (B, Option<Vec<(usize, String)>>) {
    let dead = write(store, &batch, max_deliveries, shutdown)
        .await
        .map(|dead| {
            dead.into_iter()
                .map(|(entry, error)| {
                    let index = batch.iter().position(|e| std::ptr::eq(e, entry));
                    (
                        index.expect("a dead letter is one of the batch's entries"),
                        error,
                    )
                })
                .collect()
        });
    (batch, dead)
}

/// Writes a batch so that it can be acked: transient PostgreSQL errors are retried with
/// backoff and jitter (the entries stay pending meanwhile); a data error is narrowed down
/// by halving the batch until the entry at fault is found and dead-lettered, so its
/// neighbours still land; entries delivered more than `max_deliveries` times are
/// dead-lettered without a try. Returns the dead-lettered entries with their errors, or
/// None if shutdown came first.
async fn write<'a>(
    store: &Store,
    batch: &'a [Entry],
    max_deliveries: u64,
    shutdown: &CancellationToken,
) -> Option<Vec<(&'a Entry, String)>> {
    let mut dead = Vec::new();
    let (worn_out, batch): (Vec<&Entry>, Vec<&Entry>) =
        batch.iter().partition(|e| e.deliveries > max_deliveries);
    for entry in worn_out {
        let error = format!("delivered {} times without being synced", entry.deliveries);
        if !dead_letter(store, entry, &error, shutdown).await {
            return None;
        }
        dead.push((entry, error));
    }
    let mut parts: Vec<Vec<&Entry>> = vec![batch];
    while let Some(part) = parts.pop() {
        let mut delay = Duration::from_millis(50);
        let error = loop {
            let started = std::time::Instant::now();
            match store.write_batch(&part).await {
                Ok(()) => {
                    record_batch(&part, started.elapsed());
                    break None;
                }
                Err(e) if store::is_data_error(&e) => break Some(e),
                Err(e) => {
                    warn!(error = %e, entries = part.len(), "batch write failed");
                    if !back_off(&mut delay, shutdown).await {
                        return None;
                    }
                }
            }
        };
        match (error, part.as_slice()) {
            (None, _) | (Some(_), []) => {}
            (Some(error), [entry]) => {
                warn!(%error, id = %entry.id, "dead-lettering an entry PostgreSQL refuses");
                let error = error.to_string();
                if !dead_letter(store, entry, &error, shutdown).await {
                    return None;
                }
                dead.push((*entry, error));
            }
            (Some(_), _) => {
                let (left, right) = part.split_at(part.len() / 2);
                parts.push(right.to_vec());
                parts.push(left.to_vec());
            }
        }
    }
    Some(dead)
}

async fn dead_letter(
    store: &Store,
    entry: &Entry,
    error: &str,
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        match store.dead_letter(entry, error).await {
            Ok(()) => {
                metrics::counter!(m::DEAD_LETTERS).increment(1);
                return true;
            }
            Err(e) => {
                warn!(error = %e, "dead letter not written");
                if !back_off(&mut delay, shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Metrics of a committed batch: size, time, and each event's lag from its timestamp.
fn record_batch(part: &[&Entry], took: Duration) {
    metrics::counter!(m::BATCHES).increment(1);
    metrics::counter!(m::ROWS_SYNCED).increment(part.len() as u64);
    metrics::histogram!(m::BATCH_SIZE).record(part.len() as f64);
    metrics::histogram!(m::BATCH_SECONDS).record(took.as_secs_f64());
    let now_ms = now_ms();
    let mut credits = 0;
    let mut by_kind: Vec<(EventKind, u64)> = Vec::new();
    for entry in part {
        if let Ok(event) = &entry.event {
            credits += event.cost;
            match by_kind.iter_mut().find(|(kind, _)| *kind == event.kind()) {
                Some((_, n)) => *n += 1,
                None => by_kind.push((event.kind(), 1)),
            }
            metrics::histogram!(m::SYNC_LAG_SECONDS)
                .record((now_ms - event.data.ts()).max(0) as f64 / 1000.0);
        }
    }
    metrics::counter!(m::CREDITS_SYNCED).increment(credits);
    for (kind, n) in by_kind {
        metrics::counter!(m::EVENTS_SYNCED, "kind" => kind.as_str()).increment(n);
    }
}

/// Credits counted in Redis (every shard's total) minus those in PostgreSQL's balances.
async fn unsynced_credits(ingest: &mut Ingest, store: &Store) -> anyhow::Result<i64> {
    let in_redis = ingest.credit_total().await?;
    let in_postgres = db::credits::synced_total(store.pool()).await?;
    Ok(in_redis - in_postgres)
}

/// Sleeps `delay` plus up to half of it again (jitter, so workers do not retry in step),
/// then doubles it up to 5 s. False if shutdown came first.
async fn back_off(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    metrics::counter!(m::RETRIES).increment(1);
    let jitter = Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 2));
    let slept = tokio::select! {
        _ = tokio::time::sleep(*delay + jitter) => true,
        _ = shutdown.cancelled() => false,
    };
    *delay = (*delay * 2).min(Duration::from_secs(5));
    slept
}
