//! The PostgreSQL statements the gateway and the worker share. The schema is in
//! `migrations/` (applied by the worker at start); the worker's batch writes, which only it
//! runs, are in `worker/src/store.rs`.
//!
//! - `watermark`: the per-team sync watermark and its invariant;
//! - `floor`: what PostgreSQL holds of a team, where its Redis counters start;
//! - `history`: pages of a team's messages;
//! - `credits`: a user's synced credit balance.

pub mod credits;
pub mod floor;
pub mod history;
pub mod watermark;

use sqlx::PgPool;

/// PostgreSQL answers a trivial query (readiness).
pub async fn ping(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(db).await.map(|_| ())
}
