//! PostgreSQL statements of both binaries, and those that keep the sync watermark's
//! invariant wherever they run. The schema is in `migrations/` (applied by the worker at
//! start); the rest of the worker's batch writes are in `worker/src/store/`.
//!
//! - `watermark`: the per-team sync watermark and its invariant;
//! - `floor`: what PostgreSQL holds of a team, where its Redis counters start;
//! - `history`: pages of a team's messages;
//! - `credits`: a user's synced credit balance;
//! - `unread`: a user's unread counts;
//! - `archive`: a message's versions from the event archive.

pub mod archive;
pub mod credits;
pub mod floor;
pub mod history;
pub mod unread;
pub mod watermark;

use sqlx::PgPool;

/// PostgreSQL answers a trivial query (readiness).
pub async fn ping(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(db).await.map(|_| ())
}
