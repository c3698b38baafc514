//! A load-generator connection: WebSocket over TCP from a chosen loopback source address
//! (one address has ~28k ephemeral ports; 100k connections need several), JSON frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::stack::SECRET;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The TLS client configuration of a `--tls` run: connections are then wss://.
static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Connects over wss:// from now on, trusting what `config` trusts.
pub fn use_tls(config: Arc<rustls::ClientConfig>) {
    let _ = TLS.set(config);
}

/// Whether connections offer permessage-deflate (`idle --deflate`).
static OFFER_DEFLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Connections offer permessage-deflate from now on.
pub fn offer_deflate() {
    OFFER_DEFLATE.store(true, std::sync::atomic::Ordering::Relaxed);
}

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
    let scheme = if TLS.get().is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{gateway}/ws?token={token}");
    let config = ws_config();
    let mut request = url.into_client_request()?;
    if OFFER_DEFLATE.load(std::sync::atomic::Ordering::Relaxed) {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits".parse()?,
        );
    }
    let connector = TLS.get().cloned().map(Connector::Rustls);
    let (mut ws, _) =
        tokio_tungstenite::client_async_tls_with_config(request, stream, Some(config), connector)
            .await?;
    next_of(&mut ws, "session:welcome").await?;
    Ok(ws)
}

/// The generator's WebSocket settings. A small read buffer: tungstenite zeroes its whole
/// read buffer (128 KiB by default) on every read, which made that memset most of the
/// generator's CPU.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
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

/// A gateway's `/metrics` text; None when it does not answer.
pub async fn metrics_text(gateway: SocketAddr) -> Option<String> {
    if let Some(tls) = TLS.get() {
        let request = "GET /metrics HTTP/1.1";
        let (_, _, body) = teamchat_testkit::tls::https(gateway, tls.clone(), request).await;
        return Some(body);
    }
    let (_, _, body) =
        teamchat_testkit::try_http(gateway, "GET", "/metrics", &[], Vec::new()).await?;
    String::from_utf8(body.to_vec()).ok()
}

/// The sum of every series of metric `name`, whatever its labels, in a `/metrics` text;
/// 0 for a metric not there yet.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.as_bytes().first()? {
                b' ' => rest,
                b'{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Frames queued to clients and write calls to client sockets, summed over gateways.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Writes {
    pub frames: f64,
    pub writes: f64,
}

impl Writes {
    /// The gateways' counts now; None when one does not answer.
    pub async fn read(gateways: &[SocketAddr]) -> Option<Writes> {
        let mut total = Writes {
            frames: 0.0,
            writes: 0.0,
        };
        for &gateway in gateways {
            let text = metrics_text(gateway).await?;
            total.frames += metric_sum(&text, teamchat_shared::metrics::EVENTS_OUT);
            total.writes += metric_sum(&text, teamchat_shared::metrics::SOCKET_WRITES);
        }
        Some(total)
    }

    /// What was counted between `before` and `after` (None when either is missing).
    pub fn between(before: Option<Writes>, after: Option<Writes>) -> Option<Writes> {
        let (before, after) = (before?, after?);
        Some(Writes {
            frames: after.frames - before.frames,
            writes: after.writes - before.writes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{metric_sum, number_after};

    #[test]
    fn sums_a_metrics_series_over_its_labels() {
        let text = "# TYPE teamchat_gateway_events_out_total counter\n\
            teamchat_gateway_events_out_total{type=\"ack\"} 3\n\
            teamchat_gateway_events_out_total{type=\"message:new\"} 40\n\
            teamchat_gateway_events_out_total_other 7\n\
            teamchat_gateway_socket_writes_total 12\n";
        assert_eq!(metric_sum(text, "teamchat_gateway_events_out_total"), 43.0);
        assert_eq!(
            metric_sum(text, "teamchat_gateway_socket_writes_total"),
            12.0
        );
        assert_eq!(metric_sum(text, "teamchat_gateway_connections"), 0.0);
    }

    #[test]
    fn finds_numbers_in_frames() {
        let frame = r#"{"type":"message:new","meta":{"sent_us":1795,"w":3},"seq":9}"#;
        assert_eq!(number_after(frame, "\"sent_us\""), Some(1795));
        assert_eq!(number_after(frame, "\"w\""), Some(3));
        assert_eq!(number_after(frame, "\"nope\""), None);
    }
}
