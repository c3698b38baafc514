//! The worker: reads the shards' ingest streams through a consumer group, writes each batch
//! to PostgreSQL in one transaction, and acknowledges entries only after COMMIT.
//!
//! Data path: `ingest` (read, claim, ack) → `store` (one transaction per batch).

pub mod ingest;
pub mod store;

use std::time::Duration;

use anyhow::Context;
use teamchat_shared::config::WorkerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ingest::Ingest;
use crate::store::Store;

/// Syncs until `shutdown` fires; the batch in hand is committed and acked first.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await.context("applying migrations")?;
    let mut ingest = Ingest::connect(&config).await?;
    ingest.ensure_groups().await?;
    info!(consumer = %config.consumer, group = %config.group, "worker syncing");

    let mut pending_first = true;
    let mut last_claim = tokio::time::Instant::now();
    let claim_every = Duration::from_millis(config.claim_idle_ms.max(1_000) / 2);
    while !shutdown.is_cancelled() {
        let batch = if pending_first {
            // Entries delivered to this consumer before a crash come first.
            let batch = ingest.read_own_pending().await?;
            pending_first = !batch.is_empty();
            batch
        } else if last_claim.elapsed() >= claim_every {
            last_claim = tokio::time::Instant::now();
            ingest.claim_idle().await?
        } else {
            tokio::select! {
                batch = ingest.read_new() => batch?,
                _ = shutdown.cancelled() => break,
            }
        };
        if batch.is_empty() {
            continue;
        }
        for chunk in batch.chunks(config.batch_size.max(1)) {
            write_with_retry(&store, chunk).await;
            ingest.ack(chunk).await?;
        }
    }
    info!("worker stopped");
    Ok(())
}

/// Writes a batch, retrying with capped exponential backoff until PostgreSQL takes it: the
/// entries stay pending in Redis meanwhile, so nothing is acked that is not committed.
async fn write_with_retry(store: &Store, batch: &[ingest::Entry]) {
    let mut delay = Duration::from_millis(50);
    loop {
        match store.write_batch(batch).await {
            Ok(()) => return,
            Err(error) => {
                warn!(%error, entries = batch.len(), retry_in_ms = delay.as_millis() as u64, "batch write failed");
                let jitter = Duration::from_millis(u64::from(std::process::id() % 50));
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn shutdown_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}
