//! A load-generator connection: WebSocket over TCP from a chosen loopback source address
//! (one address has ~28k ephemeral ports; 100k connections need several), JSON frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stack::SECRET;

pub type Ws = WebSocketStream<TcpStream>;

/// Source addresses 127.0.0.2 … 127.0.0.51, spread over connection numbers.
pub fn source_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 50) as u8))
}

pub fn token(user: &str, teams: &[&str]) -> String {
    teamchat_testkit::sign_with(
        &json!({"sub": user, "teams": teams, "exp": teamchat_testkit::now() + 86_400}),
        SECRET,
    )
}

/// Opens a WebSocket to the gateway and waits for `session:welcome`.
pub async fn connect(gateway: SocketAddr, source: IpAddr, token: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(gateway).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{gateway}/ws?token={token}");
    // A small read buffer: tungstenite zeroes its whole read buffer (128 KiB by default)
    // on every read, which made that memset most of the generator's CPU.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    next_of(&mut ws, "session:welcome").await?;
    Ok(ws)
}

/// Joins a team (resuming after `since` when given); returns `room:joined`.
pub async fn join(ws: &mut Ws, team: &str, since: Option<&Value>) -> anyhow::Result<Value> {
    let mut frame = json!({"type": "room:join", "team": team});
    if let Some(since) = since {
        frame["since"] = since.clone();
    }
    ws.send(Message::text(frame.to_string())).await?;
    next_of(ws, "room:joined").await
}

/// The next frame of `kind`, passing over presence and typing chatter.
pub async fn next_of(ws: &mut Ws, kind: &str) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .with_context(|| format!("no {kind} within 60 s"))?
            .with_context(|| format!("closed before {kind}"))??;
        let Message::Text(text) = message else {
            if let Message::Close(close) = message {
                bail!("closed before {kind}: {close:?}");
            }
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        if frame["type"] == kind {
            return Ok(frame);
        }
        if frame["type"] == "error" || frame["type"] == "room:error" {
            bail!("{kind} refused: {frame}");
        }
    }
}

/// Reads and discards frames until the connection ends (answers pings on the way).
pub async fn drain(mut ws: Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// The unsigned integer after `"key":` in a JSON text, without parsing the whole frame.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = text[at..].trim_start_matches([':', ' ']);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn finds_numbers_in_frames() {
        let frame = r#"{"type":"message:new","meta":{"sent_us":1795,"w":3},"seq":9}"#;
        assert_eq!(number_after(frame, "\"sent_us\""), Some(1795));
        assert_eq!(number_after(frame, "\"w\""), Some(3));
        assert_eq!(number_after(frame, "\"nope\""), None);
    }
}
