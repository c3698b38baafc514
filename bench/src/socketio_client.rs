//! A Socket.IO client, as much of one as the fan-out needs to drive the comparison peers
//! (bench/peers): Engine.IO v4 and Socket.IO v5 over a plain WebSocket, the default
//! namespace, JSON payloads, no HTTP long-polling and no binary attachments.
//!
//! Packets are text frames: an Engine.IO type digit (`0` open, `2` ping, `3` pong,
//! `4` message) and, inside a message, a Socket.IO type digit (`0` connect, `2` event,
//! `3` ack, `4` connect error), then an optional ack id and a JSON array.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};

/// The ack id of a `room:join` (each connection joins once, before anything else).
const JOIN_ACK: u64 = 0;

/// A packet received, as far as the fan-out tells them apart.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An Engine.IO ping: answer with [`pong`] or the server drops the connection.
    Ping,
    /// An event: its name and its whole argument array (JSON text).
    Event { name: &'a str, args: &'a str },
    /// The answer to an emit with an ack id: the id and its argument array (JSON text).
    Ack { id: u64, args: &'a str },
    /// The server ended the namespace connection (Socket.IO disconnect or Engine.IO close).
    Closed,
    /// Anything else (open, connect, noop).
    Other,
}

/// Reads a text frame. Cheap enough for every delivery: nothing is parsed as JSON.
pub fn parse(text: &str) -> Incoming<'_> {
    match text.as_bytes() {
        [b'2', ..] => Incoming::Ping,
        [b'1', ..] | [b'4', b'1', ..] => Incoming::Closed,
        [b'4', b'2', ..] => {
            let args = skip_digits(&text[2..]);
            match args
                .strip_prefix("[\"")
                .and_then(|rest| rest.split_once('"'))
            {
                Some((name, _)) => Incoming::Event { name, args },
                None => Incoming::Other,
            }
        }
        [b'4', b'3', ..] => {
            let args = skip_digits(&text[2..]);
            match text[2..text.len() - args.len()].parse() {
                Ok(id) => Incoming::Ack { id, args },
                Err(_) => Incoming::Other,
            }
        }
        _ => Incoming::Other,
    }
}

fn skip_digits(text: &str) -> &str {
    text.trim_start_matches(|c: char| c.is_ascii_digit())
}

/// `socket.emit(event, payload)`, with an ack id when the sender wants an answer.
pub fn emit(event: &str, payload: &Value, ack: Option<u64>) -> Message {
    let id = ack.map(|id| id.to_string()).unwrap_or_default();
    Message::text(format!("42{id}{}", json!([event, payload])))
}

/// The answer to an Engine.IO ping.
pub fn pong() -> Message {
    Message::text("3")
}

/// Opens a WebSocket to a Socket.IO server from `source` and connects to the default
/// namespace: `0{…}` (open) in, `40` out, `40{…}` (connected) in.
pub async fn connect(server: SocketAddr, source: IpAddr) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(client::ws_config()),
    )
    .await?;
    let open = next_text(&mut ws, "the Engine.IO open packet").await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let text = next_text(&mut ws, "the namespace connect").await?;
        match text.as_bytes() {
            [b'4', b'0', ..] => return Ok(ws),
            [b'4', b'4', ..] => bail!("namespace connection refused: {text}"),
            [b'2', ..] => ws.send(pong()).await?,
            _ => {}
        }
    }
}

/// Joins a room: `room:join` `{team}` with an ack id, and waits for its `{ok: true}`.
pub async fn join(ws: &mut Ws, team: &str) -> anyhow::Result<()> {
    ws.send(emit("room:join", &json!({"team": team}), Some(JOIN_ACK)))
        .await?;
    loop {
        let text = next_text(ws, "the join's ack").await?;
        match parse(&text) {
            Incoming::Ack { id: JOIN_ACK, args } if args.contains(r#""ok":true"#) => return Ok(()),
            Incoming::Ack { id: JOIN_ACK, args } => bail!("room:join refused: {args}"),
            Incoming::Ping => ws.send(pong()).await?,
            Incoming::Closed => bail!("closed before the join's ack: {text}"),
            _ => {}
        }
    }
}

/// The next text frame (within 60 s, as `client::next_of`).
async fn next_text(ws: &mut Ws, what: &str) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .with_context(|| format!("no {what} within 60 s"))?
            .with_context(|| format!("closed before {what}"))??;
        match message {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Close(close) => bail!("closed before {what}: {close:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Incoming, emit, parse};
    use serde_json::json;

    #[test]
    fn reads_the_packets_the_fanout_meets() {
        assert_eq!(parse("2"), Incoming::Ping);
        assert_eq!(parse("41"), Incoming::Closed);
        assert_eq!(parse("1"), Incoming::Closed);
        assert_eq!(parse(r#"40{"sid":"x"}"#), Incoming::Other);
        let delivery = r#"42["message:new",{"meta":{"sent_us":17,"w":1},"team":"room3"}]"#;
        assert_eq!(
            parse(delivery),
            Incoming::Event {
                name: "message:new",
                args: &delivery[2..]
            }
        );
        assert_eq!(
            parse(r#"4312345[{"ok":true}]"#),
            Incoming::Ack {
                id: 12345,
                args: r#"[{"ok":true}]"#
            }
        );
        assert_eq!(parse("43[]"), Incoming::Other);
    }

    #[test]
    fn writes_events_with_and_without_an_ack_id() {
        let payload = json!({"team": "room1"});
        let text = |m: tokio_tungstenite::tungstenite::Message| m.into_text().unwrap().to_string();
        assert_eq!(
            text(emit("room:join", &payload, Some(7))),
            r#"427["room:join",{"team":"room1"}]"#
        );
        assert_eq!(
            text(emit("message:send", &payload, None)),
            r#"42["message:send",{"team":"room1"}]"#
        );
    }
}
