//! The writer half of a connection: drains the connection's bounded send queue and writes
//! every frame queued so far with one syscall, sends heartbeat pings, and closes.
//!
//! Frames for many recipients are encoded once per encoding (`OutFrame`) and shared.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use teamchat_shared::metrics as m;
use teamchat_shared::protocol::{Encoding, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::queue::Receiver;

/// How long a connection marked too slow may take to accept what is being written.
const SLOW_WRITE_GRACE: Duration = Duration::from_secs(5);

/// A server frame shared by every local recipient, encoded at most once per encoding.
pub struct OutFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl OutFrame {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        self.frame.kind()
    }

    pub fn bytes(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| self.frame.encode(encoding))
    }
}

/// What a connection's queue carries.
pub enum Outbound {
    /// A frame shared with other recipients.
    Shared(Arc<OutFrame>),
    /// Frames shared with other recipients, queued together (one slot for a burst); the
    /// frame at the second index, if any, is not this connection's to hear (it caused it).
    Batch(Arc<Vec<Arc<OutFrame>>>, u32),
    /// A frame for this connection only (replies, welcome). Boxed: a queue's slots are
    /// the size of the largest variant, and a drained queue keeps a few of them.
    Own(Box<ServerFrame>),
    /// A control frame the reader owes the peer (pong, close echo). Boxed, as is `Close`:
    /// both are rare, and a small slot keeps every idle connection's queue small.
    Control(Box<(OpCode, Bytes)>),
    /// A heartbeat ping (the reader keeps the connection's one timer).
    Ping,
    /// Close the connection with this code; nothing is written after it.
    Close(Box<(u16, &'static str)>),
}

// Every connection's queue allocates its slots at this size: keep it two words.
const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

impl Outbound {
    pub fn own(frame: ServerFrame) -> Self {
        Outbound::Own(Box::new(frame))
    }

    pub fn control(opcode: OpCode, payload: Bytes) -> Self {
        Outbound::Control(Box::new((opcode, payload)))
    }

    pub fn close(code: u16, reason: &'static str) -> Self {
        Outbound::Close(Box::new((code, reason)))
    }
}

/// Why the writer stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    Closed(u16),
    QueueDropped,
    WriteFailed,
}

/// Close signals a connection's parts raise for each other: its rooms and reader ask the
/// writer to close (too slow: 1013; the team stream was reset: 1012, so the client rejoins
/// with `since` and learns `recovered: false`), the writer tells the reader it finished.
/// One small allocation per connection (three cancellation tokens took ≈370 bytes).
#[derive(Clone, Default)]
pub struct CloseSignals(Arc<Signals>);

#[derive(Default)]
struct Signals {
    /// The close code asked of the writer; 0 while none. The first asked wins.
    close: AtomicU16,
    writer: Notify,
    done: AtomicBool,
    reader: Notify,
}

impl CloseSignals {
    /// The send queue overflowed: close 1013.
    pub fn too_slow(&self) {
        self.ask(1013);
    }

    /// The team stream was lost and started anew: close 1012.
    pub fn stream_reset(&self) {
        self.ask(1012);
    }

    fn ask(&self, code: u16) {
        let asked = self
            .0
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        if asked.is_ok() {
            // Stored as a permit if the writer is not waiting now.
            self.0.writer.notify_one();
        }
    }

    /// Resolves with the close code once one is asked for.
    pub async fn close_asked(&self) -> u16 {
        loop {
            let code = self.0.close.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.0.writer.notified().await;
        }
    }

    /// The writer finished.
    fn finish(&self) {
        self.0.done.store(true, Ordering::Release);
        self.0.reader.notify_one();
    }

    /// Resolves once the writer finished.
    pub async fn writer_done(&self) {
        while !self.0.done.load(Ordering::Acquire) {
            self.0.reader.notified().await;
        }
    }
}

/// Runs the writer until the connection closes.
pub async fn run(
    mut socket: OwnedWriteHalf,
    mut queue: Receiver<Outbound>,
    encoding: Encoding,
    signals: CloseSignals,
) -> WriterEnd {
    let mut buffer = BytesMut::new();
    let end = loop {
        let closed = tokio::select! {
            biased;
            code = signals.close_asked() => {
                let reason = if code == 1012 { "stream reset; rejoin with since" } else { "too slow" };
                push(&mut buffer, Outbound::close(code, reason), encoding)
            }
            item = queue.recv() => {
                let Some(item) = item else { break WriterEnd::QueueDropped };
                let mut closed = push(&mut buffer, item, encoding);
                // Coalesce: everything queued now goes out in one write.
                while closed.is_none() && buffer.len() < 256 * 1024 {
                    let Some(item) = queue.try_recv() else { break };
                    closed = push(&mut buffer, item, encoding);
                }
                closed
            }
        };
        if !write_all_or_give_up(&mut socket, &buffer, &signals).await {
            break WriterEnd::WriteFailed;
        }
        if queue.is_empty() {
            // Idle now: an idle connection holds no write buffer (a burst, like a join's
            // presence list, would otherwise leave kilobytes behind in every connection).
            buffer = BytesMut::new();
        } else {
            buffer.clear();
        }
        if let Some(code) = closed {
            break WriterEnd::Closed(code);
        }
    };
    signals.finish();
    let code = match &end {
        WriterEnd::Closed(code) => code.to_string(),
        _ => "none".to_owned(),
    };
    metrics::counter!(m::CLOSES, "code" => code).increment(1);
    if end == WriterEnd::Closed(1013) {
        metrics::counter!(m::QUEUE_OVERFLOWS).increment(1);
    }
    end
}

/// Writes the buffer. A peer that stops reading blocks the write; once a close is asked
/// for (too slow, stream reset) the write gets `SLOW_WRITE_GRACE` to finish (so the close
/// frame can follow), then the connection is given up. Returns false when the write did
/// not complete.
async fn write_all_or_give_up(
    socket: &mut OwnedWriteHalf,
    buffer: &[u8],
    signals: &CloseSignals,
) -> bool {
    let write = socket.write_all(buffer);
    tokio::pin!(write);
    tokio::select! {
        written = &mut write => written.is_ok(),
        _ = signals.close_asked() => matches!(tokio::time::timeout(SLOW_WRITE_GRACE, write).await, Ok(Ok(()))),
    }
}

/// Appends an item to the write buffer; returns the close code once a close frame is in it.
fn push(buffer: &mut BytesMut, item: Outbound, encoding: Encoding) -> Option<u16> {
    let opcode = match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::MsgPack => OpCode::Binary,
    };
    match item {
        Outbound::Shared(frame) => push_frame(buffer, opcode, frame.bytes(encoding)),
        Outbound::Batch(frames, skip) => {
            for (i, frame) in frames.iter().enumerate() {
                if i != skip as usize {
                    push_frame(buffer, opcode, frame.bytes(encoding));
                }
            }
        }
        Outbound::Own(frame) => push_frame(buffer, opcode, &frame.encode(encoding)),
        Outbound::Ping => push_frame(buffer, OpCode::Ping, b""),
        Outbound::Control(control) => {
            let (op, payload) = *control;
            push_frame(buffer, op, &payload);
            if op == OpCode::Close {
                return Some(
                    payload
                        .get(..2)
                        .map_or(1000, |b| u16::from_be_bytes([b[0], b[1]])),
                );
            }
        }
        Outbound::Close(close) => {
            let (code, reason) = *close;
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
            push_frame(buffer, OpCode::Close, &payload);
            return Some(code);
        }
    }
    None
}

/// Appends one unmasked server frame.
fn push_frame(buffer: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; 10];
    let len = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    buffer.extend_from_slice(&head[..len]);
    buffer.extend_from_slice(payload);
}
