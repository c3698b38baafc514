//! Tailing team channels on a Redis Cluster: one cluster connection (RESP3) whose nodes
//! push what is published to this gateway. A team's channel is a shard channel
//! (`SSUBSCRIBE` on the node that owns the team's shard, where the append script
//! `SPUBLISH`es it, so no other node carries it); the control channel is a plain one.
//!
//! The cluster client subscribes again by itself after a node fails or a slot moves to
//! another node. Each confirmation it pushes for a team's channel makes the team's room
//! catch up from its stream, so what was published meanwhile is read back; one for the
//! control channel rechecks the revocations. A subscription that fails (its node is down)
//! is tried again every second.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use teamchat_shared::config::{RedisArgs, Timeouts};
use teamchat_shared::keys::Keys;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::tail::{Rooms, SubCmd, SubRun, back_off, received, runs};

/// How often subscriptions that failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Runs the pub/sub side of the gateway on a cluster until the command channel closes.
pub async fn run(
    redis: RedisArgs,
    keys: Keys,
    rooms: Arc<impl Rooms>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    let control = keys.control();
    let (pushed, mut pushes) = mpsc::unbounded_channel();
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        response: Some(Duration::from_secs(5)),
        retries: None,
    };
    let client = match redis.cluster_client(timeouts, Some(pushed)) {
        Ok(client) => client,
        Err(e) => return error!(error = %e, "REDIS_CLUSTER_URLS: no cluster client"),
    };
    let mut backoff = Duration::from_millis(50);
    let mut conn = loop {
        match client.get_async_connection().await {
            Ok(conn) => break conn,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cluster pub/sub connection failed");
                if !back_off(&mut cmds, &mut backoff).await {
                    return;
                }
            }
        }
    };
    let mut subscriptions = Subscriptions {
        keys,
        control,
        failed: BTreeSet::new(),
    };
    let channels = rooms.channels();
    info!(channels = channels.len(), "cluster pub/sub connected");
    subscriptions.subscribe(&mut conn, channels).await;
    // The rooms opened before the connection came catch up now.
    rooms.catch_up_all();

    let mut retry = tokio::time::interval(RETRY_EVERY);
    let mut pending = Vec::new();
    loop {
        tokio::select! {
            received = cmds.recv_many(&mut pending, 1024) => {
                if received == 0 {
                    return;
                }
                subscriptions.apply(&mut conn, &mut pending).await;
            }
            push = pushes.recv() => match push {
                Some(push) => subscriptions.pushed(rooms.as_ref(), push),
                None => return,
            },
            _ = retry.tick() => {
                if !subscriptions.failed.is_empty() {
                    let failed = std::mem::take(&mut subscriptions.failed);
                    subscriptions.subscribe(&mut conn, failed.into_iter().collect()).await;
                }
            }
        }
    }
}

struct Subscriptions {
    keys: Keys,
    control: String,
    /// Channels whose subscription failed, to try again.
    failed: BTreeSet<String>,
}

impl Subscriptions {
    /// Applies queued subscription changes in order, batching runs of one kind.
    async fn apply(&mut self, conn: &mut ClusterConnection, pending: &mut Vec<SubCmd>) {
        for run in runs(pending) {
            match run {
                SubRun::Subscribe(channels, readies) => {
                    self.subscribe(conn, channels).await;
                    for ready in readies {
                        let _ = ready.send(());
                    }
                }
                SubRun::Unsubscribe(channels) => {
                    for channel in &channels {
                        self.failed.remove(channel);
                    }
                    for channels in self.by_shard(channels).into_values() {
                        if let Err(e) = conn.sunsubscribe(&channels).await {
                            warn!(error = %e, "SUNSUBSCRIBE failed");
                        }
                    }
                }
            }
        }
    }

    /// Subscribes to `channels`: team channels by shard (one command per shard, whose
    /// channels share its slot), the control channel as a plain channel.
    async fn subscribe(&mut self, conn: &mut ClusterConnection, channels: Vec<String>) {
        let (control, teams): (Vec<String>, Vec<String>) =
            channels.into_iter().partition(|c| *c == self.control);
        if !control.is_empty()
            && let Err(e) = conn.subscribe(&self.control).await
        {
            warn!(error = %e, "SUBSCRIBE to the control channel failed; trying again");
            self.failed.insert(self.control.clone());
        }
        for channels in self.by_shard(teams).into_values() {
            if let Err(e) = conn.ssubscribe(&channels).await {
                metrics::counter!(teamchat_shared::metrics::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, channels = channels.len(), "SSUBSCRIBE failed; trying again");
                self.failed.extend(channels);
            }
        }
    }

    /// Team channels grouped by their team's shard.
    fn by_shard(&self, channels: Vec<String>) -> BTreeMap<u32, Vec<String>> {
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for channel in channels {
            if let Some(team) = self.keys.team_of_channel(&channel) {
                let shard = self.keys.shard_of(team);
                by_shard.entry(shard).or_default().push(channel);
            }
        }
        by_shard
    }

    /// What a node pushed: a published message, or a (re)subscription's confirmation.
    fn pushed(&self, rooms: &impl Rooms, push: PushInfo) {
        let channel = push.data.first().and_then(text);
        match (push.kind, channel) {
            (PushKind::Message | PushKind::SMessage, Some(channel)) => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    received(&self.keys, &self.control, rooms, channel, payload);
                }
            }
            (PushKind::SSubscribe, Some(channel)) => {
                if let Some(team) = self.keys.team_of_channel(channel) {
                    rooms.catch_up(team);
                }
            }
            (PushKind::Subscribe, Some(channel)) if channel == self.control => {
                rooms.recheck_access();
            }
            (PushKind::SUnsubscribe, Some(channel)) => {
                // A slot moved away (or we left): the client subscribes again where it
                // went once it sees the new slot map.
                tracing::debug!(channel, "shard channel unsubscribed");
            }
            _ => {}
        }
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}
