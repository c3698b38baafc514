//! This gateway's open connections, for the per-user limit across gateways (close 4029),
//! and for what the server API asks of a user's connections (the control channel). Each
//! is an entry in Redis that expires unless refreshed, so a dead gateway's connections
//! stop counting after `PRESENCE_TTL_MS`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use teamchat_shared::keys::slice_of;

use crate::AppState;
use crate::broker::Broker;
use crate::outlet::{OutFrame, Outbound, Outlet};
use crate::protocol::ServerFrame;
use teamchat_shared::event::EventData;

/// What the server API asks of a user's connections on every gateway, published on the
/// control channel (`Keys::control`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of the user with `code` (1000, 4001 or 4003).
    Disconnect { user: String, code: u16 },
    /// Send the user's every connection `{"type":"notify","data":…}`.
    Notify {
        user: String,
        data: serde_json::Value,
    },
    /// Close (4001 "revoked") the user's connections whose token was issued before
    /// `before_ms`.
    Revoke { user: String, before_ms: u64 },
    /// Take the user's connections whose token was issued before `before_ms` out of the
    /// team (`room:left`, reason "removed").
    Remove {
        team: String,
        user: String,
        before_ms: u64,
    },
    /// A message mentioned these users: each of their connections whose token holds the
    /// team gets `mention` (not the author's own).
    Mention {
        team: String,
        seq: u64,
        author: String,
        ts: i64,
        users: Vec<String>,
    },
}

/// What a connection's reader is to carry out (`Session::carry_out_orders`): only it may
/// change what the connection joined, and only it knows what its token holds now.
pub enum Order {
    Revoke {
        before_ms: u64,
    },
    Remove {
        team: String,
        before_ms: u64,
    },
    /// Send the frame if the token holds the team (a `mention`).
    Tell {
        team: Arc<str>,
        frame: Arc<OutFrame>,
    },
}

/// Every connection open here, by session id.
#[derive(Default)]
pub struct Connections {
    open: Mutex<Registry>,
    /// Orders left for connections' readers, by session id (kept apart: most connections
    /// never get one).
    orders: Mutex<HashMap<Arc<str>, Vec<Order>>>,
    /// Connections that do not count towards their user's limit for now (an HTTP session
    /// no stream or poll holds): not refreshed, so not counted.
    uncounted: Mutex<HashSet<Arc<str>>>,
}

struct Open {
    user: Arc<str>,
    outlet: Outlet,
}

/// The open connections by session id, and each user's sessions: what is asked of a user
/// (a mention of 50 users, say) finds their connections without a look at everyone's.
#[derive(Default)]
struct Registry {
    sessions: HashMap<Arc<str>, Open>,
    users: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl Registry {
    /// The connections of `user`.
    fn of<'a>(&'a self, user: &str) -> impl Iterator<Item = (&'a Arc<str>, &'a Open)> + 'a {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|session| self.sessions.get_key_value(session))
    }
}

impl Connections {
    pub fn register(&self, session: Arc<str>, user: Arc<str>, outlet: Outlet) {
        let mut open = self.open.lock().expect("connections lock");
        open.users
            .entry(user.clone())
            .or_default()
            .push(session.clone());
        open.sessions.insert(session, Open { user, outlet });
    }

    /// Tells every connection that the gateway is shutting down (they close with 1012).
    pub fn shut_down_all(&self) {
        for open in self
            .open
            .lock()
            .expect("connections lock")
            .sessions
            .values()
        {
            open.outlet.shut_down();
        }
    }

    /// Carries out what the server API asked of a user's connections here.
    pub fn apply(&self, control: Control) {
        let open = self.open.lock().expect("connections lock");
        let user = match &control {
            Control::Disconnect { user, .. }
            | Control::Notify { user, .. }
            | Control::Revoke { user, .. }
            | Control::Remove { user, .. } => user.clone(),
            Control::Mention {
                team,
                seq,
                author,
                ts,
                users,
            } => {
                let frame = OutFrame::new(ServerFrame::Mention {
                    team: team.clone(),
                    seq: *seq,
                    user: author.clone(),
                    ts: *ts,
                });
                let team: Arc<str> = team.as_str().into();
                let mentioned = users
                    .iter()
                    .filter(|user| *user != author)
                    .flat_map(|user| open.of(user));
                // Whether the token holds the team only the reader knows (it follows
                // refreshes): it sends the frame or not.
                self.order(mentioned, || Order::Tell {
                    team: team.clone(),
                    frame: frame.clone(),
                });
                return;
            }
        };
        let of_user = open.of(&user);
        match control {
            Control::Disconnect { code, .. } => {
                for (_, open) in of_user {
                    open.outlet.disconnect(code);
                }
            }
            Control::Notify { data, .. } => {
                let frame = OutFrame::new(ServerFrame::Notify { data });
                for (_, open) in of_user {
                    // A full queue closes the connection (1013), as for any event.
                    let _ = open.outlet.try_send(Outbound::Shared(frame.clone()));
                }
            }
            Control::Revoke { before_ms, .. } => {
                self.order(of_user, || Order::Revoke { before_ms });
            }
            Control::Remove {
                team, before_ms, ..
            } => {
                self.order(of_user, || Order::Remove {
                    team: team.clone(),
                    before_ms,
                });
            }
            Control::Mention { .. } => unreachable!("told above"),
        }
    }

    /// Leaves an order for each connection and wakes its reader.
    fn order<'a>(
        &self,
        connections: impl Iterator<Item = (&'a Arc<str>, &'a Open)>,
        order: impl Fn() -> Order,
    ) {
        let mut orders = self.orders.lock().expect("orders lock");
        for (session, open) in connections {
            orders.entry(session.clone()).or_default().push(order());
            open.outlet.order();
        }
    }

    /// The orders left for a connection.
    pub fn take_orders(&self, session: &str) -> Vec<Order> {
        self.orders
            .lock()
            .expect("orders lock")
            .remove(session)
            .unwrap_or_default()
    }

    pub fn forget(&self, session: &str) {
        let mut open = self.open.lock().expect("connections lock");
        if let Some(gone) = open.sessions.remove(session)
            && let Some(sessions) = open.users.get_mut(&gone.user)
        {
            sessions.retain(|s| **s != *session);
            if sessions.is_empty() {
                open.users.remove(&gone.user);
            }
        }
        drop(open);
        self.orders.lock().expect("orders lock").remove(session);
        self.uncounted
            .lock()
            .expect("uncounted lock")
            .remove(session);
    }

    /// The users with a connection here, each once.
    pub fn users(&self) -> Vec<Arc<str>> {
        let open = self.open.lock().expect("connections lock");
        open.users.keys().cloned().collect()
    }

    /// Whether a connection counts towards its user's limit (and is refreshed).
    pub fn set_counted(&self, session: &str, counted: bool) {
        let mut uncounted = self.uncounted.lock().expect("uncounted lock");
        match counted {
            true => uncounted.remove(session),
            false => uncounted.insert(session.into()),
        };
    }

    /// The counted connections of one slice out of `slices` (a stable split by session id).
    fn slice(&self, slice: u64, slices: u64) -> Vec<(Arc<str>, Arc<str>)> {
        let open = self.open.lock().expect("connections lock");
        let uncounted = self.uncounted.lock().expect("uncounted lock");
        open.sessions
            .iter()
            .filter(|(session, _)| slice_of(session, slices) == slice)
            .filter(|(session, _)| !uncounted.contains(*session))
            .map(|(session, open)| (open.user.clone(), session.clone()))
            .collect()
    }
}

/// Refreshes of the whole set spread over each period: refreshing every connection in
/// one pipeline kept Redis busy for tens of milliseconds every period, which every
/// message appended meanwhile waited for (p99.9 at 500 msg/s: 30 ms against 4–5 ms).
const REFRESH_SLICES: u64 = 16;

/// Refreshes every connection's entry three times per TTL, one slice of them at a time,
/// each slice in one pipeline.
pub async fn refresh(state: Arc<AppState>) {
    let ttl = state.config.presence_ttl_ms.max(30);
    let period = Duration::from_millis(ttl / 3);
    let mut every = tokio::time::interval(period / REFRESH_SLICES as u32);
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let connections = state
            .connections
            .slice(tick % REFRESH_SLICES, REFRESH_SLICES);
        tick += 1;
        if connections.is_empty() {
            continue;
        }
        if let Err(e) = state.broker.connections_refresh(&connections, ttl).await {
            warn!(error = %e, "connection refresh: Redis unavailable");
        }
    }
}

/// Tells the users a new message mentions, on every gateway (the control channel): each
/// of their connections whose token holds the team gets `mention`, joined or not. Not
/// awaited: the ack does not wait for it; a mention lost with Redis is not retried (it is
/// ephemeral; the message keeps its `mentions`).
pub fn mention(broker: &Broker, team: &str, seq: u64, data: &EventData) {
    let EventData::Message(message) = data else {
        return;
    };
    if message.mentions.is_empty() {
        return;
    }
    let control = Control::Mention {
        team: team.to_owned(),
        seq,
        author: message.user.clone(),
        ts: message.ts,
        users: message.mentions.clone(),
    };
    let published = serde_json::to_string(&control).expect("controls encode");
    let broker = broker.clone();
    tokio::spawn(async move {
        if let Err(e) = broker.publish_control(&published).await {
            tracing::warn!(error = %e, "mention not published");
        }
    });
}
