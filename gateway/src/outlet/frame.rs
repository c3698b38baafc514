//! What a connection's queue carries (`Outbound`), and frames for many recipients
//! (`OutFrame`), encoded once per encoding and shared.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};

use crate::deflate;
use crate::protocol::{Encoding, ServerFrame};

/// A server frame shared by every local recipient, encoded at most once per encoding, and
/// compressed at most once per encoding, at its first recipient that takes it compressed.
pub struct OutFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
    json_deflated: OnceLock<Option<Bytes>>,
    msgpack_deflated: OnceLock<Option<Bytes>>,
}

impl OutFrame {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            json_deflated: OnceLock::new(),
            msgpack_deflated: OnceLock::new(),
        })
    }

    /// The encoded frame compressed (permessage-deflate); `None` when it goes as it is
    /// (under 1 KiB, or not smaller).
    pub fn deflated(&self, encoding: Encoding) -> Option<&Bytes> {
        let cell = match encoding {
            Encoding::Json => &self.json_deflated,
            Encoding::MsgPack => &self.msgpack_deflated,
        };
        cell.get_or_init(|| deflate::deflate(self.bytes(encoding)))
            .as_ref()
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

    /// A close frame: the writer sends it, and ends.
    /// A reply encoded as it will be written (a data frame of the connection's encoding),
    /// so that it can be weighed; other items as they are.
    pub(super) fn encoded(self, encoding: Encoding) -> Self {
        match self {
            Outbound::Own(frame) => {
                Outbound::control(data_opcode(encoding), frame.encode(encoding))
            }
            item => item,
        }
    }

    pub(super) fn closes(&self) -> bool {
        match self {
            Outbound::Close(_) => true,
            Outbound::Control(control) => control.0 == OpCode::Close,
            _ => false,
        }
    }
}

/// Appends an item to the write buffer, data frames compressed when the connection
/// negotiated permessage-deflate; returns the close code once a close frame is in it.
pub(super) fn push(
    buffer: &mut BytesMut,
    item: Outbound,
    encoding: Encoding,
    deflate: bool,
) -> Option<u16> {
    let opcode = data_opcode(encoding);
    let shared = |buffer: &mut BytesMut, frame: &OutFrame| match deflate
        .then(|| frame.deflated(encoding))
        .flatten()
    {
        Some(compressed) => push_frame(buffer, opcode, true, compressed),
        None => push_frame(buffer, opcode, false, frame.bytes(encoding)),
    };
    match item {
        Outbound::Shared(frame) => shared(buffer, &frame),
        Outbound::Batch(frames, skip) => {
            for (i, frame) in frames.iter().enumerate() {
                if i != skip as usize {
                    shared(buffer, frame);
                }
            }
        }
        Outbound::Own(frame) => push_data(buffer, opcode, &frame.encode(encoding), deflate),
        Outbound::Ping => push_frame(buffer, OpCode::Ping, false, b""),
        Outbound::Control(control) => {
            let (op, payload) = *control;
            if matches!(op, OpCode::Text | OpCode::Binary) {
                // A reply, queued encoded.
                push_data(buffer, op, &payload, deflate);
                return None;
            }
            push_frame(buffer, op, false, &payload);
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
            push_frame(buffer, OpCode::Close, false, &payload);
            return Some(code);
        }
    }
    None
}

/// Appends a data frame for this connection alone, compressed if it negotiated it.
fn push_data(buffer: &mut BytesMut, opcode: OpCode, payload: &[u8], deflate: bool) {
    match deflate.then(|| deflate::deflate(payload)).flatten() {
        Some(compressed) => push_frame(buffer, opcode, true, &compressed),
        None => push_frame(buffer, opcode, false, payload),
    }
}

/// The opcode of the connection's data frames.
fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::MsgPack => OpCode::Binary,
    }
}

/// The bytes a queued item will write, near enough (frame heads aside): what the send
/// queue's byte bound counts. Replies are queued encoded (`Outbound::encoded`).
pub(super) fn weight(item: &Outbound, encoding: Encoding) -> usize {
    match item {
        Outbound::Shared(frame) => frame.bytes(encoding).len(),
        Outbound::Batch(frames, _) => frames.iter().map(|f| f.bytes(encoding).len()).sum(),
        Outbound::Control(control) => control.1.len(),
        Outbound::Own(_) | Outbound::Ping | Outbound::Close(_) => 0,
    }
}

/// Appends one unmasked server frame; `compressed` sets RSV1 (RFC 7692).
fn push_frame(buffer: &mut BytesMut, opcode: OpCode, compressed: bool, payload: &[u8]) {
    let mut head = [0u8; 10];
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    frame.rsv1 = compressed;
    let len = frame.fmt_head(&mut head);
    buffer.extend_from_slice(&head[..len]);
    buffer.extend_from_slice(payload);
}
