//! This gateway's open connections, for the per-user limit across gateways (close 4029).
//! Each is an entry in Redis that expires unless refreshed, so a dead gateway's
//! connections stop counting after `PRESENCE_TTL_MS`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::AppState;

/// Session id → user of every connection open here.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<Arc<str>, Arc<str>>>,
}

impl Connections {
    pub fn register(&self, session: Arc<str>, user: Arc<str>) {
        self.open
            .lock()
            .expect("connections lock")
            .insert(session, user);
    }

    pub fn forget(&self, session: &str) {
        self.open.lock().expect("connections lock").remove(session);
    }

    fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let open = self.open.lock().expect("connections lock");
        open.iter()
            .map(|(session, user)| (user.clone(), session.clone()))
            .collect()
    }
}

/// Refreshes every connection's entry a few times per TTL, in one pipeline.
pub async fn refresh(state: Arc<AppState>) {
    let ttl = state.config.presence_ttl_ms.max(30);
    let mut every = tokio::time::interval(Duration::from_millis(ttl / 3));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let connections = state.connections.snapshot();
        if connections.is_empty() {
            continue;
        }
        if let Err(e) = state.broker.connections_refresh(&connections, ttl).await {
            warn!(error = %e, "connection refresh: Redis unavailable");
        }
    }
}
