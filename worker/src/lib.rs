//! The worker: reads the shards' ingest streams through a consumer group, writes each batch
//! to PostgreSQL in one transaction, and acknowledges entries only after COMMIT.
//!
//! Data path: `ingest` (read, claim, ack) → `sync` (the batch loop: retries, halving, dead
//! letters) → `store` (one transaction per batch). `retention` trims the team streams
//! behind what is synced; `replay` rebuilds PostgreSQL from a team's history (stream and
//! archive, `teamchat_shared::history`) and exports it; `erase` forgets what a user wrote;
//! `health` serves `/healthz`, `/readyz` and `/metrics`.

pub mod erase;
pub mod health;
pub mod ingest;
pub mod replay;
pub mod retention;
pub mod store;
mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use teamchat_shared::config::WorkerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::Store;

/// Syncs until `shutdown` fires; the batch in hand is committed and acked first. Redis
/// errors reconnect (with backoff) instead of ending the worker.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    teamchat_shared::metrics::install();
    teamchat_shared::metrics::touch("teamchat_worker_");
    let store = Store::connect(
        &config.database_url,
        config.write_concurrency,
        Some(Duration::from_millis(config.statement_timeout_ms)),
    )
    .await?
    .keep_archive_for(config.archive_retention);
    let redis = config.redis.clone();
    if !redis.is_cluster() {
        redis.client().context("parsing REDIS_URL")?;
    }
    let migrated = Arc::new(AtomicBool::new(false));
    let readiness = health::Readiness {
        db: store.pool().clone(),
        redis,
        migrated: migrated.clone(),
    };
    let health = health::serve(config.listen, readiness, shutdown.clone()).await?;
    info!(%health, "health endpoints listening");
    store.migrate().await.context("applying migrations")?;
    migrated.store(true, Ordering::Relaxed);
    let trimming = shutdown.child_token();
    let trimmer = tokio::spawn(retention::run(
        config.clone(),
        store.pool().clone(),
        trimming.clone(),
    ));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match sync::sync(&config, &store, &shutdown).await {
            Ok(()) => break,
            Err(error) => {
                warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Redis unavailable; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    trimming.cancel();
    let _ = trimmer.await;
    info!("worker stopped");
    Ok(())
}
