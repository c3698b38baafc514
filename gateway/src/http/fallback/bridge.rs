//! An HTTP session's connection: a WebSocket session of this gateway, opened over loopback
//! with the user's token, whose frames are kept for the session's stream or polls and to
//! which its `POST /v1/send` requests are written. Everything a WebSocket client gets —
//! authentication, limits, rooms, order and recovery, presence, the server API's orders —
//! an HTTP client gets the same way, because it is the same session.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketRead};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

/// How long opening the loopback connection and its welcome may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Client frames waiting to be written to the loopback connection.
const WRITES_QUEUED: usize = 64;

/// What is written on the loopback connection.
enum Write {
    Text(Bytes),
    Pong(Bytes),
    Close,
}

/// A frame kept for the session's client, with what an SSE event of it needs.
#[derive(Clone)]
pub struct Kept {
    pub kind: String,
    pub json: Arc<str>,
    /// `<team>:<epoch>:<offset>` of a durable event.
    pub event_id: Option<String>,
}

/// How the session ended: the close code and reason of its loopback connection.
#[derive(Clone, Debug)]
pub struct Ended {
    pub code: u16,
    pub reason: String,
}

#[derive(Default)]
struct Buffer {
    frames: VecDeque<Kept>,
    /// The index of `frames[0]`: frames are numbered from 0 for the session's life.
    first: u64,
    bytes: usize,
    ended: Option<Ended>,
    /// Streams and polls holding the session now.
    holders: usize,
    /// When the last of them let go of the session (`None` while one holds it).
    detached_at: Option<Instant>,
}

/// What a request written on the client's behalf waits for.
enum Waiting {
    /// The direct reply, for the `POST /v1/send` that wrote it, with the client's `rid`.
    Reply(oneshot::Sender<Value>, Option<Value>),
    /// A reply that goes to the stream (a join's answer), with the client's `rid`.
    Stream(Option<Value>),
}

pub struct Bridge {
    pub id: Arc<str>,
    pub user: String,
    writes: mpsc::Sender<Write>,
    kept: Mutex<Buffer>,
    changed: Notify,
    waiting: Mutex<HashMap<u64, Waiting>>,
    next_rid: AtomicU64,
    /// The newest poll's ticket: an older poll still waiting answers at once.
    polls: AtomicU64,
    /// The loopback connection's own session id (from its welcome).
    pub inner_session: std::sync::OnceLock<Arc<str>>,
    /// Whether the loopback connection counts towards the user's limit now.
    pub counted: std::sync::atomic::AtomicBool,
    /// Team → epoch, from `room:joined`: durable events' SSE ids name it.
    epochs: Mutex<HashMap<String, String>>,
    limits: (usize, usize),
}

/// The session ended before a frame could be written.
#[derive(Debug)]
pub struct Gone;

/// Why a session could not be opened: the close its loopback connection got (4001, 4003,
/// 4029, …) or the connection's failure.
pub enum OpenError {
    Closed(Ended),
    Failed(String),
}

impl Bridge {
    /// Opens the loopback connection with `token` and waits for its welcome (kept as the
    /// session's first frame). `limits`: the most frames and bytes kept for the client.
    pub async fn open(
        addr: SocketAddr,
        token: &str,
        user: String,
        limits: (usize, usize),
    ) -> Result<Arc<Self>, OpenError> {
        let (read, write, early) = tokio::time::timeout(OPEN_TIMEOUT, handshake(addr, token))
            .await
            .map_err(|_| OpenError::Failed("loopback handshake timed out".into()))?
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        let (mut reader, writer) = fastwebsockets::after_handshake_split(read, write, Role::Client);
        reader.push_buffered(&early);
        reader.set_auto_pong(false);
        reader.set_auto_close(false);
        let (writes, to_write) = mpsc::channel(WRITES_QUEUED);
        tokio::spawn(write_loop(writer, to_write));
        let bridge = Arc::new(Bridge {
            id: session_id().into(),
            user,
            writes,
            // Held by nothing yet: the lapse counts from the opening.
            kept: Mutex::new(Buffer {
                detached_at: Some(Instant::now()),
                ..Buffer::default()
            }),
            changed: Notify::new(),
            waiting: Mutex::default(),
            next_rid: AtomicU64::new(1),
            polls: AtomicU64::new(0),
            inner_session: std::sync::OnceLock::new(),
            counted: std::sync::atomic::AtomicBool::new(true),
            epochs: Mutex::default(),
            limits,
        });
        tokio::spawn(read_loop(reader, bridge.clone()));
        // The welcome, or the close that refuses the token (4001, 4003, 4029).
        let first = tokio::time::timeout(OPEN_TIMEOUT, bridge.changed_since(0)).await;
        if first.is_err() {
            bridge.close();
            return Err(OpenError::Failed(
                "no welcome on the loopback connection".into(),
            ));
        }
        let welcomed = bridge
            .kept()
            .frames
            .front()
            .is_some_and(|first| first.kind == "session:welcome");
        if !welcomed {
            let ended = bridge.ended().unwrap_or(Ended {
                code: 1006,
                reason: "connection lost".into(),
            });
            return Err(OpenError::Closed(ended));
        }
        Ok(bridge)
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn ended(&self) -> Option<Ended> {
        self.kept().ended.clone()
    }

    /// Writes a client frame on the session (its `rid` replaced by the bridge's own). With
    /// `reply`, resolves to the direct reply (its `rid` given back); without, the reply, if
    /// any, goes to the stream like any frame.
    /// Err: the session ended.
    pub async fn write(
        &self,
        mut frame: serde_json::Map<String, Value>,
        reply: bool,
    ) -> Result<Option<oneshot::Receiver<Value>>, Gone> {
        let n = self.next_rid.fetch_add(1, Ordering::Relaxed);
        let client_rid = frame.insert("rid".into(), Value::String(format!("~{n}")));
        let (waiting, answer) = if reply {
            let (send, answer) = oneshot::channel();
            (Waiting::Reply(send, client_rid), Some(answer))
        } else {
            (Waiting::Stream(client_rid), None)
        };
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(n, waiting);
        let json = serde_json::to_vec(&frame).expect("JSON values encode");
        if self.ended().is_some()
            || self
                .writes
                .send(Write::Text(Bytes::from(json)))
                .await
                .is_err()
        {
            return Err(Gone);
        }
        Ok(answer)
    }

    /// Ends the session: its loopback connection closes (1000), as a socket's would.
    pub fn close(&self) {
        let _ = self.writes.try_send(Write::Close);
    }

    /// The frames kept from index `from` on, and the index after them.
    pub fn frames_from(&self, from: u64) -> (Vec<Kept>, u64) {
        let kept = self.kept();
        let skip = from.saturating_sub(kept.first) as usize;
        let frames: Vec<Kept> = kept.frames.iter().skip(skip).cloned().collect();
        (frames, kept.first + kept.frames.len() as u64)
    }

    /// The index after the newest frame kept.
    pub fn next_index(&self) -> u64 {
        let kept = self.kept();
        kept.first + kept.frames.len() as u64
    }

    /// The client has every frame below `upto`: they are let go of. False when `upto` is
    /// past what was ever kept.
    pub fn acknowledge(&self, upto: u64) -> bool {
        let mut kept = self.kept();
        if upto > kept.first + kept.frames.len() as u64 {
            return false;
        }
        while kept.first < upto {
            let Some(frame) = kept.frames.pop_front() else {
                break;
            };
            kept.bytes -= frame.json.len();
            kept.first += 1;
        }
        true
    }

    /// Resolves when there is a frame past `index` (the session's end is one).
    pub async fn changed_since(&self, index: u64) {
        self.wait_until(|| self.next_index() > index).await;
    }

    /// A poll begins: the poll waiting before it (if any) answers now, so a session holds
    /// one poll at a time however many a client sends.
    pub fn new_poll(&self) -> u64 {
        let ticket = self.polls.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.notify_waiters();
        ticket
    }

    /// Resolves when there is a frame past `index`, or a newer poll began.
    pub async fn poll_wait(&self, index: u64, ticket: u64) {
        self.wait_until(|| {
            self.next_index() > index || self.polls.load(Ordering::Acquire) != ticket
        })
        .await;
    }

    /// Waits for `ready`, looked at again whenever the session changes (registered before
    /// each look, so no change is missed between the look and the wait).
    async fn wait_until(&self, ready: impl Fn() -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if ready() {
                return;
            }
            changed.await;
        }
    }

    /// Whether the client has had everything, the session's end included.
    pub fn finished(&self, next: u64) -> bool {
        self.ended().is_some() && self.next_index() <= next
    }

    /// A stream or poll holds the session (`true`), or let go of it.
    pub fn attach(&self, attached: bool) {
        let mut kept = self.kept();
        if attached {
            kept.holders += 1;
            kept.detached_at = None;
        } else {
            kept.holders = kept.holders.saturating_sub(1);
            if kept.holders == 0 {
                kept.detached_at = Some(Instant::now());
            }
        }
    }

    /// Since when no stream or poll has held the session.
    pub fn detached_since(&self) -> Option<Instant> {
        self.kept().detached_at
    }

    /// Keeps a frame from the session for the client: what `POST /v1/send` waits for is
    /// handed to it instead. Past the limits the client is too slow: the session ends.
    /// `text` is the frame as it came: kept as it is unless the frame was changed (most
    /// frames, room events, are not: no second encoding per delivery).
    fn keep(&self, mut frame: serde_json::Map<String, Value>, text: &str) {
        if self.ended().is_some() {
            return;
        }
        let mut changed = false;
        if let Some(Value::String(rid)) = frame.get("rid")
            && let Some(n) = rid.strip_prefix('~').and_then(|n| n.parse::<u64>().ok())
        {
            changed = true;
            let waiting = self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&n);
            match waiting {
                Some(Waiting::Reply(reply, rid)) => {
                    match rid {
                        Some(rid) => frame.insert("rid".into(), rid),
                        None => frame.remove("rid"),
                    };
                    let _ = reply.send(Value::Object(frame));
                    return;
                }
                Some(Waiting::Stream(Some(rid))) => {
                    frame.insert("rid".into(), rid);
                }
                Some(Waiting::Stream(None)) | None => {
                    frame.remove("rid");
                }
            }
        }
        let kind = frame
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // The client names its HTTP session, not the loopback connection's.
        if kind == "session:welcome" {
            changed = true;
            let inner = frame.insert("session".into(), Value::String(self.id.to_string()));
            if let Some(Value::String(inner)) = inner {
                let _ = self.inner_session.set(inner.into());
            }
        }
        let team = frame.get("team").and_then(Value::as_str);
        let mut epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if kind == "room:joined"
            && let (Some(team), Some(epoch)) = (team, frame.get("epoch").and_then(Value::as_str))
        {
            epochs.insert(team.to_owned(), epoch.to_owned());
        }
        let event_id = match (team, frame.get("offset").and_then(Value::as_str)) {
            (Some(team), Some(offset)) if kind != "room:joined" && kind != "message:ack" => epochs
                .get(team)
                .map(|epoch| format!("{team}:{epoch}:{offset}")),
            _ => None,
        };
        drop(epochs);
        let json: Arc<str> = match changed {
            true => serde_json::to_string(&frame)
                .expect("JSON values encode")
                .into(),
            false => text.into(),
        };
        let mut kept = self.kept();
        let (max_frames, max_bytes) = self.limits;
        if kept.frames.len() >= max_frames || kept.bytes + json.len() > max_bytes {
            drop(kept);
            self.end(1013, "too slow");
            self.close();
            return;
        }
        kept.bytes += json.len();
        kept.frames.push_back(Kept {
            kind,
            json,
            event_id,
        });
        drop(kept);
        self.changed.notify_waiters();
    }

    /// The session ends: its last frame for the client is `session:closed` with the close
    /// code (kept past the limits: it is the last).
    pub(super) fn end(&self, code: u16, reason: &str) {
        let mut kept = self.kept();
        if kept.ended.is_none() {
            kept.ended = Some(Ended {
                code,
                reason: reason.to_owned(),
            });
            let closed =
                serde_json::json!({"type": "session:closed", "code": code, "reason": reason});
            let json: Arc<str> = closed.to_string().into();
            kept.bytes += json.len();
            kept.frames.push_back(Kept {
                kind: "session:closed".into(),
                json,
                event_id: None,
            });
        }
        drop(kept);
        // What waits for a reply will not get one.
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.changed.notify_waiters();
    }
}

/// A session id: 128 random bits, the session's only credential after it was opened.
fn session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The client side of a WebSocket handshake with this gateway, the token in the header.
async fn handshake(
    addr: SocketAddr,
    token: &str,
) -> std::io::Result<(OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGVhbWNoYXQgYnJpZGdlIQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: teamchat.v1.json\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "loopback connection closed in the handshake",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > 8_192 {
            return Err(std::io::Error::other("loopback handshake answer too long"));
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&head[..head.len().min(32)]).into_owned();
        return Err(std::io::Error::other(format!(
            "loopback upgrade refused: {status}"
        )));
    }
    let early = head.split_off(end);
    let (read, write) = stream.into_split();
    Ok((read, write, early))
}

/// Writes client frames, pongs and the close; ends with the connection.
async fn write_loop(
    mut writer: fastwebsockets::WebSocketWrite<tokio::net::tcp::OwnedWriteHalf>,
    mut to_write: mpsc::Receiver<Write>,
) {
    while let Some(write) = to_write.recv().await {
        let frame = match write {
            Write::Close => Frame::close(1000, b"session ended"),
            Write::Pong(payload) => Frame::pong(Payload::Owned(payload.to_vec())),
            Write::Text(json) => Frame::text(Payload::Owned(json.to_vec())),
        };
        let closing = frame.opcode == OpCode::Close;
        if let Err(e) = writer.write_frame(frame).await {
            debug!(error = %e, "HTTP session: loopback write failed");
            return;
        }
        if closing {
            return;
        }
    }
}

/// Reads the session's frames until its connection closes.
async fn read_loop(mut reader: WebSocketRead<OwnedReadHalf>, bridge: Arc<Bridge>) {
    let mut obligated = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
    loop {
        let frame = match reader.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => {
                debug!(error = %e, "HTTP session: loopback read ended");
                bridge.end(1006, "connection lost");
                break;
            }
        };
        match frame.opcode {
            OpCode::Text => match serde_json::from_slice::<Value>(&frame.payload) {
                // A text frame is UTF-8 (checked by the frame reader).
                Ok(Value::Object(fields)) => bridge.keep(
                    fields,
                    std::str::from_utf8(&frame.payload).unwrap_or_default(),
                ),
                _ => debug!("HTTP session: a frame that is not a JSON object"),
            },
            OpCode::Ping => {
                let pong = Bytes::copy_from_slice(&frame.payload);
                let _ = bridge.writes.try_send(Write::Pong(pong));
            }
            OpCode::Close => {
                let payload = &frame.payload;
                let code = match payload.len() {
                    0 | 1 => 1005,
                    _ => u16::from_be_bytes([payload[0], payload[1]]),
                };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                bridge.end(code, &reason);
                break;
            }
            _ => {}
        }
    }
    // The session is over: the writer ends too.
    bridge.close();
}
