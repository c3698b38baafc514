//! Tailing team channels: one pub/sub connection per gateway, subscribed only to the teams
//! its connections joined. Subscribe and unsubscribe requests are applied in the order the
//! hub issued them and batched into one command each; messages are routed to their room.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use teamchat_shared::event::Published;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::hub::Hub;

/// A change of the gateway's subscriptions.
pub enum SubCmd {
    /// Subscribe; the sender fires once Redis confirmed it.
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// Applies subscription changes in order, batching runs of the same kind.
pub async fn run_subscriber(mut sink: PubSubSink, mut cmds: mpsc::UnboundedReceiver<SubCmd>) {
    let mut pending = Vec::new();
    while cmds.recv_many(&mut pending, 1024).await > 0 {
        let mut items = pending.drain(..).peekable();
        while let Some(first) = items.next() {
            match first {
                SubCmd::Subscribe(channel, ready) => {
                    let (mut channels, mut readies) = (vec![channel], vec![ready]);
                    while let Some(SubCmd::Subscribe(..)) = items.peek() {
                        if let Some(SubCmd::Subscribe(c, r)) = items.next() {
                            channels.push(c);
                            readies.push(r);
                        }
                    }
                    if let Err(e) = sink.subscribe(&channels).await {
                        // The room still catches up from the stream on its periodic check.
                        error!(error = %e, "SUBSCRIBE failed");
                    }
                    for ready in readies {
                        let _ = ready.send(());
                    }
                }
                SubCmd::Unsubscribe(channel) => {
                    let mut channels = vec![channel];
                    while let Some(SubCmd::Unsubscribe(_)) = items.peek() {
                        if let Some(SubCmd::Unsubscribe(c)) = items.next() {
                            channels.push(c);
                        }
                    }
                    if let Err(e) = sink.unsubscribe(&channels).await {
                        warn!(error = %e, "UNSUBSCRIBE failed");
                    }
                }
            }
        }
    }
}

/// Decodes each published event once and hands it to its room.
pub async fn run_dispatcher(mut stream: PubSubStream, hub: Arc<Hub>) {
    while let Some(msg) = stream.next().await {
        let channel = msg.get_channel_name();
        let Some(team) = hub.keys().team_of_channel(channel) else {
            continue;
        };
        match Published::parse(team, msg.get_payload_bytes()) {
            Ok(published) => hub.dispatch(team, published),
            Err(e) => error!(error = %e, channel, "undecodable published event"),
        }
    }
    // Rooms keep delivering from their periodic stream checks, with more latency.
    error!("pub/sub connection closed");
}
