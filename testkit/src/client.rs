//! A WebSocket test client (tokio-tungstenite, an implementation independent of the
//! gateway's) that speaks docs/protocol.md in JSON or MessagePack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the client puts its token.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    None,
    Query(&'a str),
    Header(&'a str),
    /// The cookie and the Origin header sent with it.
    Cookie(&'a str, Option<&'a str>),
}

/// Opens a WebSocket; `protocol` is offered as `Sec-WebSocket-Protocol`.
pub async fn open(
    addr: SocketAddr,
    auth: Auth<'_>,
    protocol: Option<&str>,
) -> Result<(Ws, Response<Option<Vec<u8>>>), tungstenite::Error> {
    open_with(addr, None, auth, protocol).await
}

/// Opens a wss:// WebSocket, trusting what `tls` trusts.
pub async fn open_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    auth: Auth<'_>,
    protocol: Option<&str>,
) -> Result<(Ws, Response<Option<Vec<u8>>>), tungstenite::Error> {
    open_with(addr, Some(tls), auth, protocol).await
}

async fn open_with(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: Auth<'_>,
    protocol: Option<&str>,
) -> Result<(Ws, Response<Option<Vec<u8>>>), tungstenite::Error> {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let url = match auth {
        Auth::Query(token) => format!("{scheme}://{addr}/ws?token={token}"),
        _ => format!("{scheme}://{addr}/ws"),
    };
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    match auth {
        Auth::Header(token) => {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        Auth::Cookie(token, origin) => {
            headers.insert(
                "cookie",
                HeaderValue::from_str(&format!("tc_token={token}")).unwrap(),
            );
            if let Some(origin) = origin {
                headers.insert("origin", HeaderValue::from_str(origin).unwrap());
            }
        }
        Auth::None | Auth::Query(_) => {}
    }
    if let Some(protocol) = protocol {
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
    }
    let connector = tls.map(Connector::Rustls);
    tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector).await
}

/// A connected, welcomed client.
pub struct Client {
    pub ws: Ws,
    pub msgpack: bool,
    pub welcome: Value,
}

impl Client {
    /// Connects with a JSON subprotocol and the token in the query; expects the welcome.
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        Self::connect_as(addr, Auth::Query(token), false).await
    }

    pub async fn connect_msgpack(addr: SocketAddr, token: &str) -> Client {
        Self::connect_as(addr, Auth::Query(token), true).await
    }

    pub async fn connect_as(addr: SocketAddr, auth: Auth<'_>, msgpack: bool) -> Client {
        Self::connect_with(addr, None, auth, msgpack).await
    }

    /// Connects (JSON, the token in the query); `None` if the upgrade fails or the server
    /// closes before its welcome (for a test in which the server may be unavailable).
    pub async fn try_connect(addr: SocketAddr, token: &str) -> Option<Client> {
        let protocol = "teamchat.v1.json";
        let (ws, _) = open_with(addr, None, Auth::Query(token), Some(protocol))
            .await
            .ok()?;
        let mut client = Client {
            ws,
            msgpack: false,
            welcome: Value::Null,
        };
        let welcome = client.next_frame().await?;
        (welcome["type"] == "session:welcome").then_some(())?;
        client.welcome = welcome;
        Some(client)
    }

    /// Connects over wss:// (JSON, the token in the query), trusting what `tls` trusts.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
    ) -> Client {
        Self::connect_with(addr, Some(tls), Auth::Query(token), false).await
    }

    async fn connect_with(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        auth: Auth<'_>,
        msgpack: bool,
    ) -> Client {
        let protocol = if msgpack {
            "teamchat.v1.msgpack"
        } else {
            "teamchat.v1.json"
        };
        let (ws, response) = open_with(addr, tls, auth, Some(protocol))
            .await
            .expect("WebSocket upgrade");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol)
        );
        let mut client = Client {
            ws,
            msgpack,
            welcome: Value::Null,
        };
        client.welcome = client.expect("session:welcome").await;
        client
    }

    pub async fn send(&mut self, frame: Value) {
        let message = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&frame).unwrap().into())
        } else {
            Message::text(frame.to_string())
        };
        self.ws.send(message).await.expect("sending a frame");
    }

    /// The next data frame, decoded; control frames are passed over. Fails on a close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("reading a frame");
            match message {
                Message::Text(text) => {
                    assert!(!self.msgpack, "text frame on a MessagePack connection");
                    return serde_json::from_str(&text).expect("server frames are JSON");
                }
                Message::Binary(bytes) => {
                    assert!(self.msgpack, "binary frame on a JSON connection");
                    return rmp_serde::from_slice(&bytes).expect("server frames are MessagePack");
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next data frame, or `None` once the connection closed or ended (for a test in
    /// which the server may close it, and the client reconnects).
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?
                .ok()?;
            match message {
                Message::Text(text) => return serde_json::from_str(&text).ok(),
                Message::Binary(bytes) => return rmp_serde::from_slice(&bytes).ok(),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The next data frame of type `kind`. `presence:update` frames, which arrive whenever
    /// someone comes or goes, are passed over unless `kind` is that; any other frame fails.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == "presence:update" && kind != "presence:update" {
                continue;
            }
            assert_eq!(frame["type"], kind, "unexpected frame {frame}");
            return frame;
        }
    }

    /// The next frame of type `kind`, passing over any others (other members' events).
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The next frame whose type is one of `kinds`, passing over any others.
    pub async fn until_any(&mut self, kinds: &[&str]) -> Value {
        loop {
            let frame = self.recv().await;
            if kinds.iter().any(|kind| frame["type"] == *kind) {
                return frame;
            }
        }
    }

    /// Sends a `ping` and checks the next frame is its `pong`: whatever the server sent
    /// before came, and nothing else is on its way.
    pub async fn settled(&mut self) {
        self.send(json!({"type": "ping", "rid": "settled"})).await;
        let pong = self.recv().await;
        assert_eq!(pong["type"], "pong", "a frame before the pong: {pong}");
    }

    /// Reads until the server closes; returns the close code. Data frames before it are
    /// returned too, so a test can check nothing unexpected came.
    pub async fn close_code(&mut self) -> (u16, Vec<Value>) {
        close_code(&mut self.ws).await
    }

    /// Joins a team; returns `room:joined` (and checks `presence:list` and `receipt:list`
    /// follow it).
    pub async fn join(&mut self, team: &str) -> Value {
        self.send(json!({"type": "room:join", "team": team})).await;
        let joined = self.expect("room:joined").await;
        assert_eq!(self.expect("presence:list").await["team"], team);
        assert_eq!(self.expect("receipt:list").await["team"], team);
        joined
    }

    /// Sends a message; returns its `message:ack`.
    pub async fn send_message(&mut self, team: &str, client_id: &str, body: &str) -> Value {
        self.send(
            json!({"type": "message:send", "team": team, "client_id": client_id, "body": body}),
        )
        .await;
        self.expect("message:ack").await
    }
}

/// Reads a raw socket until the server closes; returns the code and the data frames before.
pub async fn close_code(ws: &mut Ws) -> (u16, Vec<Value>) {
    let (code, _, frames) = close_frame(ws).await;
    (code, frames)
}

/// The close code and reason the server ends the connection with, and the frames before.
pub async fn close_frame(ws: &mut Ws) -> (u16, String, Vec<Value>) {
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("timed out waiting for a close");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string(), frames);
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new(), frames),
            Some(Ok(Message::Text(text))) => {
                frames.push(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Some(Ok(Message::Binary(bytes))) => {
                frames.push(rmp_serde::from_slice(&bytes).unwrap_or(Value::Null))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// A WebSocket that does nothing on its own: no automatic pongs, so a test can play a
/// client that went silent. Returns the socket after the 101 response.
pub async fn open_raw(addr: SocketAddr, token: &str) -> TcpStream {
    open_raw_with(addr, token, &[]).await
}

/// As `open_raw`, with `early` (frames, say) sent in the same write as the upgrade
/// request, before the server's answer.
pub async fn open_raw_with(addr: SocketAddr, token: &str, early: &[u8]) -> TcpStream {
    open_raw_headers(addr, token, "", early).await.0
}

/// As `open_raw_with`, with more request header lines (`"Name: value\r\n"` each);
/// returns the 101 response's head too.
pub async fn open_raw_headers(
    addr: SocketAddr,
    token: &str,
    headers: &str,
    early: &[u8],
) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    let mut request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .into_bytes();
    request.extend_from_slice(early);
    stream.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("reading the upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

/// Reads raw server frames until a close frame; returns its code. Never answers anything.
pub async fn raw_close_code(stream: &mut TcpStream) -> u16 {
    raw_frames_until_close(stream).await.0
}

/// Sends one masked text frame on a raw socket (see `open_raw`).
pub async fn raw_send_text(stream: &mut TcpStream, text: &str) {
    raw_send(stream, 0x1, text.as_bytes()).await;
}

/// Sends one masked frame with this opcode (0x1 text, 0x9 ping, …) on a raw socket.
pub async fn raw_send(stream: &mut TcpStream, opcode: u8, payload: &[u8]) {
    raw_send_frame(stream, true, opcode, payload).await;
}

/// Sends one masked frame, final or not (0x0 is a continuation).
pub async fn raw_send_frame(stream: &mut TcpStream, fin: bool, opcode: u8, payload: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let frame = raw_frame(fin, opcode, payload);
    stream.write_all(&frame).await.expect("writing a frame");
}

/// One masked client frame's bytes, final or not.
pub fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![if fin { 0x80u8 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads raw server frames until a close frame; returns the code and the data frames
/// before it (text frames, as JSON).
pub async fn raw_frames_until_close(stream: &mut TcpStream) -> (u16, Vec<Value>) {
    let mut frames = Vec::new();
    loop {
        let (opcode, payload) = raw_next_frame(stream).await;
        match opcode {
            0x8 => return (u16::from_be_bytes([payload[0], payload[1]]), frames),
            0x1 => frames.push(serde_json::from_slice(&payload).expect("JSON frame")),
            _ => {}
        }
    }
}

/// The next raw server frame: its opcode and payload.
pub async fn raw_next_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let (first, payload) = raw_next_frame_whole(stream).await;
    (first & 0x0f, payload)
}

/// The next raw server frame: its first byte (FIN, RSV bits, opcode) and payload.
pub async fn raw_next_frame_whole(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut head))
        .await
        .expect("timed out waiting for a frame")
        .expect("connection ended without a close frame");
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.unwrap()),
        127 => stream.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream
        .read_exact(&mut payload)
        .await
        .expect("reading a frame");
    (head[0], payload)
}
