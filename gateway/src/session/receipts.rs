//! Coalescing of one connection's read receipts: a burst of `receipt:update`s costs at most
//! one stream event per team per second, carrying the highest seq of the burst. Pending
//! receipts are written when the connection closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use teamchat_shared::event::{ActorData, EventData};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use teamchat_shared::runtime::now_ms;

use super::requests::credit_cost;
use crate::AppState;
use crate::broker::{Append, AppendOutcome};

/// The shortest interval between two receipt events of one connection in one team.
const INTERVAL: Duration = Duration::from_secs(1);

/// The handle a session keeps; dropping it flushes what is pending.
pub struct Coalescer {
    updates: mpsc::UnboundedSender<(String, u64)>,
}

impl Coalescer {
    pub fn spawn(
        state: Arc<AppState>,
        session: Arc<str>,
        user: String,
        credit_limit: Option<u64>,
    ) -> Self {
        let (updates, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(state, session, user, credit_limit, rx));
        Self { updates }
    }

    pub fn update(&self, team: String, seq: u64) {
        let _ = self.updates.send((team, seq));
    }
}

struct Team {
    pending: Option<u64>,
    next_allowed: Instant,
}

async fn run(
    state: Arc<AppState>,
    session: Arc<str>,
    user: String,
    credit_limit: Option<u64>,
    mut updates: mpsc::UnboundedReceiver<(String, u64)>,
) {
    let mut teams: HashMap<String, Team> = HashMap::new();
    loop {
        let next_due = teams
            .values()
            .filter(|t| t.pending.is_some())
            .map(|t| t.next_allowed)
            .min();
        let closed = tokio::select! {
            update = updates.recv() => match update {
                Some((team, seq)) => {
                    let entry = teams.entry(team).or_insert(Team { pending: None, next_allowed: Instant::now() });
                    entry.pending = Some(entry.pending.map_or(seq, |p| p.max(seq)));
                    false
                }
                None => true,
            },
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)).await }, if next_due.is_some() => false,
        };
        let now = Instant::now();
        for (team, entry) in &mut teams {
            if entry.next_allowed > now && !closed {
                continue;
            }
            let Some(seq) = entry.pending.take() else {
                continue;
            };
            entry.next_allowed = now + INTERVAL;
            let data = EventData::Receipt(ActorData {
                user: user.clone(),
                ts: now_ms(),
            });
            let append = Append {
                team,
                src: &session,
                data: &data,
                target: seq,
                staff: false,
                cost: credit_cost(&state.config, &data),
                limit: credit_limit,
            };
            match state.storage.append(&append).await {
                Ok(AppendOutcome::Refused(code)) => debug!(?code, team, seq, "receipt refused"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, team, seq, "receipt not written"),
            }
        }
        if closed {
            return;
        }
    }
}
