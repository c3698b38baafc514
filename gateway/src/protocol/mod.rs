//! The client protocol (docs/protocol.md): the frames a client sends (`client`), the frames
//! the server sends (`server`), request errors (`error`), and the two encodings, JSON text
//! and MessagePack maps, chosen per connection by subprotocol.

pub mod chat;
pub mod client;
pub mod error;
pub mod server;

pub use client::{ClientFrame, Limits, Request, Since, decode_client};
pub use error::{ErrorBody, ErrorCode, RequestError};
pub use server::{MessageView, PresenceEntry, Receipt, ServerFrame};

/// The subprotocols, in the server's order of preference when a client offers both.
pub const SUBPROTOCOL_JSON: &str = "teamchat.v1.json";
pub const SUBPROTOCOL_MSGPACK: &str = "teamchat.v1.msgpack";

/// How a connection's frames are encoded, chosen by subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name {
            SUBPROTOCOL_JSON => Some(Encoding::Json),
            SUBPROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }
}
