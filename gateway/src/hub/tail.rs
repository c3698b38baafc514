//! Tailing team channels: one pub/sub connection per gateway, subscribed only to the teams
//! its connections joined. Subscribe and unsubscribe requests are applied in the order the
//! hub issued them and batched into one command each; messages are decoded once and routed
//! to their room. When the connection drops it is opened again, every joined team is
//! subscribed again, and every room catches up from its stream, so nothing published
//! meanwhile is missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use teamchat_shared::config::RedisArgs;
use teamchat_shared::event::Published;
use teamchat_shared::keys::Keys;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Where the tail hands what it receives: the hub's rooms. The tail only calls these, so
/// it knows nothing of how rooms are kept.
pub trait Rooms: Send + Sync + 'static {
    /// The channels of every team with a room here (to subscribe again after a reconnect).
    fn channels(&self) -> Vec<String>;
    /// Asks every room to read what its stream has beyond what it delivered.
    fn catch_up_all(&self);
    /// The same for one team's room, if there is one here.
    fn catch_up(&self, team: &str);
    /// Hands a published event to its team's room.
    fn dispatch(&self, team: &str, published: Published);
    /// Carries out a message of the control channel (`Keys::control`).
    fn control(&self, payload: &[u8]);
    /// After a reconnect: what the control channel said meanwhile was missed, so the
    /// revocation records of this gateway's users are read and carried out.
    fn recheck_access(&self);
}

/// A change of the gateway's subscriptions.
pub enum SubCmd {
    /// Subscribe; the sender fires once Redis confirmed it (or the connection is down: the
    /// channel is subscribed again on reconnect, and the room catches up then).
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// Runs the pub/sub side of the gateway until the command channel closes.
pub async fn run(
    redis: RedisArgs,
    keys: Keys,
    rooms: Arc<impl Rooms>,
    cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    if redis.is_cluster() {
        return super::cluster_tail::run(redis, keys, rooms, cmds).await;
    }
    let Ok(client) = redis.client() else {
        // Checked when the hub started.
        return error!("REDIS_URL does not parse");
    };
    run_single(client, keys, rooms, cmds).await
}

/// On one Redis: one pub/sub connection, opened again when it drops.
async fn run_single(
    client: redis::Client,
    keys: Keys,
    rooms: Arc<impl Rooms>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    let control = keys.control();
    let mut backoff = Duration::from_millis(50);
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "pub/sub connection failed");
                if !back_off(&mut cmds, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (mut sink, mut stream) = pubsub.split();
        // Every team with a room here, whether subscribed before (a reconnect) or opened
        // while no connection could be had, and the control channel; the rooms then catch
        // up from their streams.
        let channels = rooms.channels();
        if !channels.is_empty() {
            if let Err(e) = sink.subscribe(&channels).await {
                warn!(error = %e, "resubscribe failed");
                continue;
            }
            info!(teams = channels.len(), "pub/sub (re)subscribed");
            rooms.catch_up_all();
            rooms.recheck_access();
        }
        let mut pending = Vec::new();
        loop {
            tokio::select! {
                received = cmds.recv_many(&mut pending, 1024) => {
                    if received == 0 {
                        return;
                    }
                    if !apply(&mut sink, &mut pending).await {
                        break;
                    }
                }
                message = stream.next() => match message {
                    Some(msg) => {
                        received(&keys, &control, rooms.as_ref(), msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    None => {
                        warn!("pub/sub connection lost; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// After a failed connection: waits `backoff` (then doubles it, up to 2 s) while still
/// answering subscribe requests, so joins do not wait; every room's channel is subscribed
/// once connected. False when the command channel closed (the gateway stops).
pub(super) async fn back_off(
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
    backoff: &mut Duration,
) -> bool {
    metrics::counter!(teamchat_shared::metrics::GATEWAY_REDIS_ERRORS).increment(1);
    let deadline = tokio::time::sleep(*backoff);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            cmd = cmds.recv() => match cmd {
                Some(SubCmd::Subscribe(_, ready)) => { let _ = ready.send(()); }
                Some(SubCmd::Unsubscribe(_)) => {}
                None => return false,
            },
        }
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

/// Hands a message received on `channel` to the control or to its team's room.
pub(super) fn received(
    keys: &Keys,
    control: &str,
    rooms: &impl Rooms,
    channel: &str,
    payload: &[u8],
) {
    if channel == control {
        return rooms.control(payload);
    }
    let Some(team) = keys.team_of_channel(channel) else {
        return;
    };
    match Published::parse(team, payload) {
        Ok(published) => rooms.dispatch(team, published),
        // The room reads a durable event it missed from the stream.
        Err(e) => {
            metrics::counter!(teamchat_shared::metrics::UNDECODABLE_EVENTS, "source" => "pubsub")
                .increment(1);
            error!(error = %e, channel, "undecodable published event passed over");
        }
    }
}

/// Applies queued subscription changes in order, a command per run of one kind. Returns
/// false when the connection failed (the caller reconnects and resubscribes everything).
async fn apply(sink: &mut PubSubSink, pending: &mut Vec<SubCmd>) -> bool {
    let mut healthy = true;
    for run in runs(pending) {
        match run {
            SubRun::Subscribe(channels, readies) => {
                if healthy && let Err(e) = sink.subscribe(&channels).await {
                    error!(error = %e, "SUBSCRIBE failed");
                    healthy = false;
                }
                for ready in readies {
                    let _ = ready.send(());
                }
            }
            SubRun::Unsubscribe(channels) => {
                if healthy && let Err(e) = sink.unsubscribe(&channels).await {
                    warn!(error = %e, "UNSUBSCRIBE failed");
                    healthy = false;
                }
            }
        }
    }
    healthy
}

/// Queued subscription changes of one kind, in a row: the channels, and for subscriptions
/// who waits for each.
pub(super) enum SubRun {
    Subscribe(Vec<String>, Vec<oneshot::Sender<()>>),
    Unsubscribe(Vec<String>),
}

/// Drains `pending` into runs of one kind, keeping their order (each run is one command).
pub(super) fn runs(pending: &mut Vec<SubCmd>) -> Vec<SubRun> {
    let mut runs: Vec<SubRun> = Vec::new();
    for cmd in pending.drain(..) {
        match (runs.last_mut(), cmd) {
            (Some(SubRun::Subscribe(channels, readies)), SubCmd::Subscribe(channel, ready)) => {
                channels.push(channel);
                readies.push(ready);
            }
            (Some(SubRun::Unsubscribe(channels)), SubCmd::Unsubscribe(channel)) => {
                channels.push(channel);
            }
            (_, SubCmd::Subscribe(channel, ready)) => {
                runs.push(SubRun::Subscribe(vec![channel], vec![ready]));
            }
            (_, SubCmd::Unsubscribe(channel)) => runs.push(SubRun::Unsubscribe(vec![channel])),
        }
    }
    runs
}
