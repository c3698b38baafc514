//! Coalescing of one connection's read receipts: a burst of `receipt:update`s costs at most
//! one stream event per team per second, carrying the highest seq of the burst, and a
//! user's receipts on this gateway share a budget (`RATE_RECEIPT_PER_MIN`): past it they
//! wait, coalescing further, and are never refused. Pending receipts are written when the
//! connection closes.
//!
//! What waits is one seq per team, in a map the session writes and the task takes from:
//! however fast receipts come, and however slow the appends (a stalled Redis), it holds
//! no more than the connection's teams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teamchat_shared::event::{ActorData, EventData};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use teamchat_shared::runtime::now_ms;

use super::limits::Operation;
use super::requests::credit_cost;
use crate::AppState;
use crate::broker::{Append, AppendOutcome};

/// The shortest interval between two receipt events of one connection in one team.
const INTERVAL: Duration = Duration::from_secs(1);

/// The handle a session keeps; dropping it flushes what is pending.
pub struct Coalescer {
    shared: Arc<Shared>,
}

/// The highest seq not yet taken, per team; and whether the session is gone.
#[derive(Default)]
struct Shared {
    pending: Mutex<(HashMap<String, u64>, bool)>,
    wake: Notify,
}

impl Coalescer {
    pub fn spawn(
        state: Arc<AppState>,
        session: Arc<str>,
        user: String,
        credit_limit: Option<u64>,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(state, session, user, credit_limit, shared.clone()));
        Self { shared }
    }

    pub fn update(&self, team: String, seq: u64) {
        let mut pending = self.shared.pending.lock().expect("receipts lock");
        let highest = pending.0.entry(team).or_insert(seq);
        *highest = (*highest).max(seq);
        drop(pending);
        self.shared.wake.notify_one();
    }
}

impl Drop for Coalescer {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("receipts lock").1 = true;
        self.shared.wake.notify_one();
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
    shared: Arc<Shared>,
) {
    let mut teams: HashMap<String, Team> = HashMap::new();
    loop {
        let next_due = teams
            .values()
            .filter(|t| t.pending.is_some())
            .map(|t| t.next_allowed)
            .min();
        tokio::select! {
            () = shared.wake.notified() => {}
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)).await }, if next_due.is_some() => {}
        }
        let (updates, closed) = {
            let mut pending = shared.pending.lock().expect("receipts lock");
            (std::mem::take(&mut pending.0), pending.1)
        };
        for (team, seq) in updates {
            let entry = teams.entry(team).or_insert(Team {
                pending: None,
                next_allowed: Instant::now(),
            });
            entry.pending = Some(entry.pending.map_or(seq, |p| p.max(seq)));
        }
        let now = Instant::now();
        for (team, entry) in &mut teams {
            if entry.next_allowed > now && !closed {
                continue;
            }
            if entry.pending.is_none() {
                continue;
            }
            // Over the user's budget: the receipt waits (and takes in later ones).
            if let Err(wait) = state.rate_limits.check(Operation::Receipt, &user)
                && !closed
            {
                entry.next_allowed = now + wait;
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
