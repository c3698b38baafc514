//! A socketioxide server doing what teamchat-bench's fan-out asks of a chat server, as a
//! peer to compare teamchat with: join a room, broadcast a message to the room's other
//! members through socketioxide-redis (Redis pub/sub, so members on another process get
//! it), ack both. The same events, environment and `/readyz` as the Node peer.
//!
//! Environment: PORT (listens on 127.0.0.1), REDIS_URL, and REDIS_PREFIX (optional) in
//! front of the adapter's channel names, so two runs never hear each other.

use axum::routing::get;
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::{SocketIo, TransportType};
use socketioxide_redis::{RedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "3000".into())
        .parse()?;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("REDIS_PREFIX").unwrap_or_default();

    let client = redis::Client::open(resp3(&redis_url))?;
    let config = RedisAdapterConfig::new().with_prefix(format!("{prefix}socket.io"));
    let adapter = RedisAdapterCtr::new_with_redis_config(&client, config).await?;
    // WebSocket only, like the Node peer (engineioxide's WebSocket has no compression).
    let (layer, io) = SocketIo::builder()
        .transports([TransportType::Websocket])
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    // The default namespace is not made by itself; with a remote adapter its set-up
    // subscribes to the adapter's channels, awaited here so "ready" means ready.
    io.ns("/", on_connect).await?;

    let app = axum::Router::new()
        .route("/readyz", get(async || "ready\n"))
        .layer(layer);
    // No Nagle: a broadcast is many small writes, each of which should leave at once.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    println!("listening");
    axum::serve(listener, app).await?;
    Ok(())
}

/// socketioxide-redis's driver needs RESP3 (its pub/sub messages arrive as pushes): asked
/// for in the URL unless the URL already names a protocol.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}protocol=resp3")
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    socket.on("room:join", on_join);
    socket.on("message:send", on_send);
}

async fn on_join<A: Adapter>(socket: SocketRef<A>, Data(payload): Data<Value>, ack: AckSender<A>) {
    let Some(team) = payload["team"].as_str() else {
        let _ = ack.send(&json!({"ok": false, "error": "team"}));
        return;
    };
    socket.join(team.to_owned());
    let _ = ack.send(&json!({"ok": true}));
}

async fn on_send<A: Adapter>(socket: SocketRef<A>, Data(payload): Data<Value>, ack: AckSender<A>) {
    let Some(team) = payload["team"].as_str() else {
        let _ = ack.send(&json!({"ok": false, "error": "team"}));
        return;
    };
    // Everyone in the room but the sender, on every server (the adapter publishes it).
    let sent = socket
        .to(team.to_owned())
        .emit("message:new", &payload)
        .await;
    let _ = ack.send(&json!({"ok": sent.is_ok()}));
}
