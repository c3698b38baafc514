//! The rooms of this gateway: which teams its connections joined, each with one room task
//! (see `room`) and one channel subscription that lives exactly as long as the room. The
//! subscriptions are kept by `tail`, which hands what it receives back through `Rooms`.

mod cluster_tail;
pub mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use teamchat_shared::config::GatewayConfig;
use teamchat_shared::event::Published;
use teamchat_shared::keys::Keys;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use teamchat_shared::keys::slice_of;

use self::tail::SubCmd;
use crate::room::queue;
use crate::room::{Join, Leave, Left, Room, RoomCmd, RoomShared};
use crate::session::connections::{Connections, Control};
use crate::storage::Storage;

/// Published events a room's queue may hold; more are dropped (counted), and the room
/// reads them from the stream. Commands are never dropped.
const ROOM_EVENT_BUFFER: usize = 4_096;

pub struct Hub {
    rooms: Mutex<HashMap<String, RoomEntry>>,
    /// This gateway's connections, for the control channel.
    connections: Arc<Connections>,
    subs: mpsc::UnboundedSender<SubCmd>,
    /// Shared by the rooms: one pointer each rather than a copy of the connection handle,
    /// key prefix and timeouts.
    shared: Arc<RoomShared>,
    tail_check: Duration,
}

struct RoomEntry {
    /// Commands and published events, in one queue: a room costs one.
    queue: queue::Sender<RoomCmd>,
    members: usize,
}

impl Hub {
    /// Opens the pub/sub connection and starts the subscriber and dispatcher tasks.
    pub async fn start(
        config: &GatewayConfig,
        storage: Storage,
        connections: Arc<Connections>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = config.redis.clone();
        if !redis.is_cluster() {
            redis.client().context("parsing REDIS_URL")?;
        }
        let (subs, sub_cmds) = mpsc::unbounded_channel();
        let hub = Arc::new(Self {
            rooms: Mutex::new(HashMap::new()),
            connections,
            subs,
            shared: Arc::new(RoomShared {
                broker: storage.broker().clone(),
                storage,
                typing_timeout: Duration::from_millis(config.typing_timeout_ms),
                presence_ttl: Duration::from_millis(config.presence_ttl_ms.max(30)),
            }),
            tail_check: Duration::from_millis(config.tail_check_ms.max(10)),
        });
        let keys = hub.keys().clone();
        let tail = tokio::spawn(tail::run(redis, keys, hub.clone(), sub_cmds));
        let check = tokio::spawn(check_tops(hub.clone()));
        let refresh = tokio::spawn(refresh_presence(hub.clone()));
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tail.abort();
            check.abort();
            refresh.abort();
        });
        Ok(hub)
    }

    pub fn keys(&self) -> &Keys {
        self.shared.broker.keys()
    }

    /// Adds a connection to a team's room; the room answers it (see `room::Join`).
    pub fn join(&self, team: &str, join: Join) {
        let mut rooms = self.rooms.lock().expect("hub lock");
        let entry = rooms.entry(team.to_owned()).or_insert_with(|| {
            metrics::gauge!(teamchat_shared::metrics::ROOMS).increment(1.0);
            RoomEntry {
                queue: self.open_room(team),
                members: 0,
            }
        });
        if entry.queue.is_closed() {
            // Its task panicked and closed its members (1011), who leave it as they go: a
            // fresh room serves the team from now on.
            entry.queue = self.open_room(team);
        }
        entry.members += 1;
        let _ = entry.queue.try_send(RoomCmd::Join(Box::new(join)));
    }

    /// Removes a connection from a team's room. With `reply`, the room sends `room:left`.
    /// `done` fires when the room has let the member go.
    pub fn leave(
        &self,
        team: &str,
        conn_id: u64,
        session: Arc<str>,
        reply: Option<Left>,
        done: Option<oneshot::Sender<()>>,
    ) {
        let mut rooms = self.rooms.lock().expect("hub lock");
        let Some(entry) = rooms.get_mut(team) else {
            return;
        };
        let _ = entry.queue.try_send(RoomCmd::Leave(Box::new(Leave {
            conn_id,
            session,
            reply,
            done,
        })));
        entry.members -= 1;
        if entry.members == 0 {
            let _ = entry.queue.try_send(RoomCmd::Shutdown);
            rooms.remove(team);
            metrics::gauge!(teamchat_shared::metrics::ROOMS).decrement(1.0);
            // Queued under the lock, so a room opened later subscribes after this.
            let _ = self
                .subs
                .send(SubCmd::Unsubscribe(self.keys().team_channel(team)));
        }
    }

    /// Every room's team with its queue.
    fn room_handles(&self) -> Vec<(String, queue::Sender<RoomCmd>)> {
        let rooms = self.rooms.lock().expect("hub lock");
        rooms
            .iter()
            .map(|(team, entry)| (team.clone(), entry.queue.clone()))
            .collect()
    }

    /// Every room's queue with its step of `steps` (see `refresh_presence`), in step order.
    fn room_steps(&self, steps: u64) -> Vec<(u64, queue::Sender<RoomCmd>)> {
        let mut rooms: Vec<_> = {
            let rooms = self.rooms.lock().expect("hub lock");
            rooms
                .iter()
                .map(|(team, entry)| (slice_of(team, steps), entry.queue.clone()))
                .collect()
        };
        rooms.sort_unstable_by_key(|(step, _)| *step);
        rooms
    }

    /// Teams with a room on this gateway.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().expect("hub lock").len()
    }

    fn open_room(&self, team: &str) -> queue::Sender<RoomCmd> {
        let (queue, received) = queue::channel(ROOM_EVENT_BUFFER, RoomCmd::is_published);
        let (ready_tx, ready) = oneshot::channel();
        let _ = self
            .subs
            .send(SubCmd::Subscribe(self.keys().team_channel(team), ready_tx));
        let room = Room::new(team.to_owned(), self.shared.clone());
        let running = room.run(ready, received);
        // Every room is this future in a task of 128-byte steps: at 360 bytes (release)
        // the task is 512; past 408 it is 640 (docs/performance.md).
        debug_assert!(
            std::mem::size_of_val(&running) <= 408,
            "a room's future grew to {} bytes",
            std::mem::size_of_val(&running)
        );
        // A panic ends the task, not the process (see `Room`'s drop).
        tokio::spawn(crate::caught(running));
        queue
    }
}

impl tail::Rooms for Hub {
    /// The channels of every team with a room here (to subscribe again after a reconnect),
    /// and the control channel.
    fn channels(&self) -> Vec<String> {
        let rooms = self.rooms.lock().expect("hub lock");
        rooms
            .keys()
            .map(|team| self.keys().team_channel(team))
            .chain(std::iter::once(self.keys().control()))
            .collect()
    }

    /// Hands what the server API asked of a user's connections to this gateway's.
    fn control(&self, payload: &[u8]) {
        match serde_json::from_slice::<Control>(payload) {
            Ok(control) => self.connections.apply(control),
            Err(e) => tracing::error!(error = %e, "undecodable control message passed over"),
        }
    }

    fn recheck_access(&self) {
        let connections = self.connections.clone();
        let broker = self.shared.broker.clone();
        tokio::spawn(async move {
            let users = connections.users();
            if users.is_empty() {
                return;
            }
            match broker.revocations(&users).await {
                Ok(records) => {
                    for (user, before_ms) in users.iter().zip(records) {
                        if before_ms > 0 {
                            let user = user.to_string();
                            connections.apply(Control::Revoke { user, before_ms });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "revocations not rechecked"),
            }
        });
    }

    /// Asks the team's room, if there is one here, to read what its stream has beyond
    /// what it delivered.
    fn catch_up(&self, team: &str) {
        let rooms = self.rooms.lock().expect("hub lock");
        if let Some(entry) = rooms.get(team) {
            let _ = entry.queue.try_send(RoomCmd::CatchUp);
        }
    }

    /// Asks every room to read what its stream has beyond what it delivered.
    fn catch_up_all(&self) {
        let rooms = self.rooms.lock().expect("hub lock");
        for entry in rooms.values() {
            let _ = entry.queue.try_send(RoomCmd::CatchUp);
        }
    }

    /// Hands a published event to its room. A full room buffer drops it (counted): the room
    /// sees the offset gap and reads the missing durable events from the stream.
    fn dispatch(&self, team: &str, published: Published) {
        let rooms = self.rooms.lock().expect("hub lock");
        if let Some(entry) = rooms.get(team)
            && entry
                .queue
                .try_send(RoomCmd::Published(Box::new(published)))
                == Err(queue::TrySendError::Full)
        {
            metrics::counter!(teamchat_shared::metrics::ROOM_EVENTS_DROPPED).increment(1);
        }
    }
}

/// Teams whose tops are read in one pipeline.
const TOP_CHECK_CHUNK: usize = 1_000;

/// Every `TAIL_CHECK_MS`, reads the top offset of every room's stream (pipelined, one round
/// trip per thousand rooms rather than one per room) and hands it to the room, which reads
/// whatever pub/sub did not deliver, or notices that the stream was lost.
async fn check_tops(hub: Arc<Hub>) {
    let mut every = tokio::time::interval(hub.tail_check);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let rooms = hub.room_handles();
        for chunk in rooms.chunks(TOP_CHECK_CHUNK) {
            let teams: Vec<String> = chunk.iter().map(|(team, _)| team.clone()).collect();
            match hub.shared.broker.top_offsets(&teams).await {
                Ok(tops) => {
                    for ((_, cmds), top) in chunk.iter().zip(tops) {
                        let _ = cmds.try_send(RoomCmd::Top(Box::new(top)));
                    }
                }
                Err(e) => {
                    metrics::counter!(teamchat_shared::metrics::GATEWAY_REDIS_ERRORS).increment(1);
                    tracing::warn!(error = %e, "tail check: storage unavailable");
                    break;
                }
            }
        }
    }
}

/// Asks every room to refresh its members' presence entries three times per TTL, the
/// rooms spread evenly over the period in steps of 10 ms: a refresh is a script call, and
/// a sixteenth of all rooms at once is a burst that messages appended meanwhile queue
/// behind (docs/performance.md). A room keeps its step from round to round (a hash of its
/// team), so it is refreshed once per period, as with a timer of its own, which no room
/// needs now; a room opened during a round waits for its step in the next one.
async fn refresh_presence(hub: Arc<Hub>) {
    let period = hub.shared.presence_ttl / 3;
    let steps = (period.as_millis() / 10).clamp(1, 1_000) as u64;
    let mut every = tokio::time::interval(period / steps as u32);
    loop {
        let rooms = hub.room_steps(steps);
        let mut next = rooms.iter().peekable();
        for step in 0..steps {
            every.tick().await;
            while let Some((_, queue)) = next.next_if(|(room_step, _)| *room_step <= step) {
                let _ = queue.try_send(RoomCmd::Refresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use teamchat_testkit::{Client, TestEnv, http_get};

    use crate::Gateway;
    use crate::room::RoomCmd;

    fn panics(metrics: &serde_json::Value) -> f64 {
        metrics
            .as_str()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("teamchat_gateway_panics_total "))
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A bug that panics a room's task closes its members with 1011 and is counted; the
    /// team gets a fresh room, and the members rejoin with `since`, missing nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_room_closes_its_members_and_the_team_goes_on() {
        let env = TestEnv::new().await;
        let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
        let addr = gateway.addr();
        let mut ann = Client::connect(addr, &env.token("ann", &["t"])).await;
        let mut ben = Client::connect(addr, &env.token("ben", &["t"])).await;
        let joined = ann.join("t").await;
        ben.join("t").await;
        let seen = ann.send_message("t", "c1", "before").await;
        ben.expect("message:new").await;
        let before = panics(&http_get(addr, "/metrics", &[]).await.1);

        let room = {
            let mut rooms = gateway.state.hub.rooms.lock().unwrap();
            let entry = rooms.get_mut("t").unwrap();
            // One more member still on its way out (its session slow to finish), so the
            // team's entry outlives the closed members and the next join finds it dead.
            entry.members += 1;
            entry.queue.clone()
        };
        room.try_send(RoomCmd::Panic).unwrap();
        assert_eq!(ann.close_code().await.0, 1011);
        assert_eq!(ben.close_code().await.0, 1011);
        let after = panics(&http_get(addr, "/metrics", &[]).await.1);
        assert!(after > before, "the panic is counted: {before} → {after}");

        // The team goes on in a fresh room: a new member sends, a rejoining one recovers.
        let mut carol = Client::connect(addr, &env.token("carol", &["t"])).await;
        carol.join("t").await;
        let sent = carol.send_message("t", "c2", "after").await;
        let mut ann = Client::connect(addr, &env.token("ann", &["t"])).await;
        ann.send(json!({"type":"room:join","team":"t",
            "since":{"offset":seen["offset"],"epoch":joined["epoch"]}}))
            .await;
        let rejoined = ann.expect("room:joined").await;
        assert_eq!(rejoined["recovered"], true);
        let missed = ann.expect("message:new").await;
        assert_eq!(
            (&missed["offset"], &missed["body"]),
            (&sent["offset"], &json!("after"))
        );
        ann.expect("presence:list").await;
        ann.expect("receipt:list").await;
        carol.send_message("t", "c3", "live").await;
        assert_eq!(ann.expect("message:new").await["body"], "live");
    }
}
