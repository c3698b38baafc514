//! A load-generator connection that negotiates permessage-deflate (RFC 7692) and inflates
//! what comes compressed: tungstenite has no permessage-deflate, so this one is
//! fastwebsockets (as a client) over a hand-made upgrade, and flate2.

use std::net::{IpAddr, SocketAddr};

use anyhow::bail;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub type DeflateWs = WebSocket<TcpStream>;

/// Connects from `source`, offers permessage-deflate as Chromium does, checks the gateway
/// accepted it, and joins `team` (returns once its `receipt:list` came).
pub async fn connect(
    gateway: SocketAddr,
    source: IpAddr,
    token: &str,
    team: &str,
) -> anyhow::Result<DeflateWs> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(gateway).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGVhbWNoYXQgYmVuY2ggIQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The 101's head, byte by byte: nothing after it is read here.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
        if head.len() > 4_096 {
            bail!("upgrade answer too long");
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    if !head.starts_with("http/1.1 101") {
        bail!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    if !head.contains("sec-websocket-extensions: permessage-deflate") {
        bail!("permessage-deflate not negotiated (is WS_DEFLATE on?)");
    }
    let mut ws = WebSocket::after_handshake(stream, Role::Client);
    ws.set_deflate(true);
    let join = format!(r#"{{"type":"room:join","team":"{team}"}}"#);
    ws.write_frame(Frame::text(Payload::Owned(join.into_bytes())))
        .await?;
    loop {
        let text = next_text(&mut ws).await.map_err(anyhow::Error::msg)?;
        if text.starts_with(r#"{"type":"receipt:list""#) {
            return Ok(ws);
        }
        if text.starts_with(r#"{"type":"room:error""#) {
            bail!("join refused: {text}");
        }
    }
}

/// The next text message, inflated if it came compressed; why the connection ended
/// otherwise. Pings are answered by fastwebsockets.
pub async fn next_text(ws: &mut DeflateWs) -> Result<String, String> {
    loop {
        let frame = ws.read_frame().await.map_err(|e| e.to_string())?;
        match frame.opcode {
            OpCode::Text => {
                let bytes = match frame.rsv1 {
                    true => inflate(&frame.payload)?,
                    false => frame.payload.to_vec(),
                };
                return String::from_utf8(bytes).map_err(|e| e.to_string());
            }
            OpCode::Close => {
                let code = frame
                    .payload
                    .get(..2)
                    .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                return Err(format!("close {code}"));
            }
            _ => {}
        }
    }
}

/// A compressed message inflated from an empty window (the gateway takes no context
/// over), its sync flush's tail put back.
fn inflate(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let mut input = Vec::with_capacity(compressed.len() + 4);
    input.extend_from_slice(compressed);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(compressed.len() * 8 + 1_024);
    loop {
        let taken = inflater.total_in() as usize;
        inflater
            .decompress_vec(&input[taken..], &mut out, FlushDecompress::Sync)
            .map_err(|e| e.to_string())?;
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}
