//! Frames the server sends, and how a durable stream event is delivered as one.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use teamchat_shared::event::{Attachment, EventData, MessageData, StreamEvent};

use super::Encoding;
use super::error::ErrorBody;

/// A message as the client sees it (`message:new`, and a row of HTTP history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub team: String,
    pub seq: u64,
    pub id: String,
    pub client_id: String,
    pub user: String,
    pub name: Option<String>,
    pub body: String,
    pub meta: Option<Value>,
    pub ts: i64,
    pub offset: String,
    /// Set on a thread reply: its top-level message's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl MessageView {
    /// The view of a new message at `offset`.
    pub fn new(team: &str, seq: u64, offset: u64, d: &MessageData) -> Self {
        MessageView {
            team: team.to_owned(),
            seq,
            id: d.id.clone(),
            client_id: d.client_id.clone(),
            user: d.user.clone(),
            name: d.name.clone(),
            body: d.body.clone(),
            meta: d.meta.clone(),
            ts: d.ts,
            offset: offset.to_string(),
            parent: d.parent,
            mentions: d.mentions.clone(),
            attachments: d.attachments.clone(),
        }
    }
}

/// One user's read position, in `receipt:list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub user: String,
    pub seq: u64,
}

/// One online user of `presence:list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresenceEntry {
    pub user: String,
    pub name: Option<String>,
    /// Online since, in ms since the Unix epoch.
    pub since: i64,
}

/// Frames the server sends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ServerFrame {
    #[serde(rename = "session:welcome")]
    Welcome {
        user: String,
        session: String,
        heartbeat_ms: u64,
        max_frame: usize,
    },
    #[serde(rename = "room:joined")]
    RoomJoined {
        team: String,
        epoch: String,
        offset: String,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
    },
    #[serde(rename = "room:left")]
    RoomLeft {
        team: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
        /// Why the server took the connection out (not sent for a `room:leave`).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    #[serde(rename = "message:ack")]
    MessageAck {
        /// Present in the ack of a `message:send`.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        team: String,
        seq: u64,
        id: String,
        /// Absent when nothing was appended (a pin of a pinned message, say).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<String>,
        ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
    },
    #[serde(rename = "message:new")]
    MessageNew(MessageView),
    #[serde(rename = "error")]
    Error(ErrorBody),
    #[serde(rename = "room:error")]
    RoomError(ErrorBody),
    #[serde(rename = "typing:start")]
    TypingStart { team: String, user: String },
    #[serde(rename = "typing:stop")]
    TypingStop { team: String, user: String },
    #[serde(rename = "message:edited")]
    MessageEdited {
        team: String,
        seq: u64,
        body: String,
        user: String,
        ts: i64,
        offset: String,
    },
    #[serde(rename = "message:deleted")]
    MessageDeleted {
        team: String,
        seq: u64,
        user: String,
        ts: i64,
        offset: String,
    },
    #[serde(rename = "message:pinned")]
    MessagePinned {
        team: String,
        seq: u64,
        user: String,
        ts: i64,
        offset: String,
    },
    #[serde(rename = "message:unpinned")]
    MessageUnpinned {
        team: String,
        seq: u64,
        user: String,
        ts: i64,
        offset: String,
    },
    #[serde(rename = "reaction:added")]
    ReactionAdded(ReactionView),
    #[serde(rename = "reaction:removed")]
    ReactionRemoved(ReactionView),
    #[serde(rename = "receipt:update")]
    ReceiptUpdate {
        team: String,
        user: String,
        seq: u64,
        offset: String,
    },
    #[serde(rename = "receipt:list")]
    ReceiptList {
        team: String,
        receipts: Vec<Receipt>,
    },
    #[serde(rename = "presence:list")]
    PresenceList {
        team: String,
        users: Vec<PresenceEntry>,
    },
    #[serde(rename = "presence:update")]
    PresenceUpdate {
        team: String,
        user: String,
        status: &'static str,
    },
    #[serde(rename = "token:refreshed")]
    TokenRefreshed {
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
    },
    /// What the application's backend tells a user (server API), on every connection of
    /// theirs; not stored.
    #[serde(rename = "notify")]
    Notify { data: serde_json::Value },
    /// A message mentioned the connection's user (`user` is its author); ephemeral.
    #[serde(rename = "mention")]
    Mention {
        team: String,
        seq: u64,
        user: String,
        ts: i64,
    },
}

/// A reaction added or removed, as `reaction:added` / `reaction:removed` carry it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReactionView {
    pub team: String,
    pub seq: u64,
    pub user: String,
    pub emoji: String,
    pub ts: i64,
    pub offset: String,
}

impl ServerFrame {
    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "session:welcome",
            ServerFrame::RoomJoined { .. } => "room:joined",
            ServerFrame::RoomLeft { .. } => "room:left",
            ServerFrame::MessageAck { .. } => "message:ack",
            ServerFrame::MessageNew(_) => "message:new",
            ServerFrame::MessagePinned { .. } => "message:pinned",
            ServerFrame::MessageUnpinned { .. } => "message:unpinned",
            ServerFrame::ReactionAdded(_) => "reaction:added",
            ServerFrame::ReactionRemoved(_) => "reaction:removed",
            ServerFrame::MessageEdited { .. } => "message:edited",
            ServerFrame::MessageDeleted { .. } => "message:deleted",
            ServerFrame::ReceiptUpdate { .. } => "receipt:update",
            ServerFrame::ReceiptList { .. } => "receipt:list",
            ServerFrame::PresenceList { .. } => "presence:list",
            ServerFrame::PresenceUpdate { .. } => "presence:update",
            ServerFrame::TypingStart { .. } => "typing:start",
            ServerFrame::TypingStop { .. } => "typing:stop",
            ServerFrame::TokenRefreshed { .. } => "token:refreshed",
            ServerFrame::Error(_) => "error",
            ServerFrame::RoomError(_) => "room:error",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Notify { .. } => "notify",
            ServerFrame::Mention { .. } => "mention",
        }
    }

    /// The frame a durable stream event is delivered as.
    pub fn from_event(event: &StreamEvent) -> Self {
        let (team, seq, offset) = (event.team.clone(), event.seq, event.offset.to_string());
        match &event.data {
            EventData::Message(d) => {
                ServerFrame::MessageNew(MessageView::new(&event.team, event.seq, event.offset, d))
            }
            EventData::Edit(d) => ServerFrame::MessageEdited {
                team,
                seq,
                body: d.body.clone(),
                user: d.user.clone(),
                ts: d.ts,
                offset,
            },
            EventData::Delete(d) => ServerFrame::MessageDeleted {
                team,
                seq,
                user: d.user.clone(),
                ts: d.ts,
                offset,
            },
            EventData::Receipt(d) => ServerFrame::ReceiptUpdate {
                team,
                user: d.user.clone(),
                seq,
                offset,
            },
            EventData::Pin(d) => ServerFrame::MessagePinned {
                team,
                seq,
                user: d.user.clone(),
                ts: d.ts,
                offset,
            },
            EventData::Unpin(d) => ServerFrame::MessageUnpinned {
                team,
                seq,
                user: d.user.clone(),
                ts: d.ts,
                offset,
            },
            EventData::React(d) | EventData::Unreact(d) => {
                let view = ReactionView {
                    team,
                    seq,
                    user: d.user.clone(),
                    emoji: d.emoji.clone(),
                    ts: d.ts,
                    offset,
                };
                match event.data {
                    EventData::React(_) => ServerFrame::ReactionAdded(view),
                    _ => ServerFrame::ReactionRemoved(view),
                }
            }
        }
    }

    /// Encodes the frame. Encoding a frame of our own types cannot fail.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        let bytes = match encoding {
            Encoding::Json => serde_json::to_vec(self).expect("server frames encode as JSON"),
            Encoding::MsgPack => {
                rmp_serde::to_vec_named(self).expect("server frames encode as MessagePack")
            }
        };
        Bytes::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, RequestError};
    use serde_json::json;

    #[test]
    fn server_frames_encode_with_their_type() {
        let f = ServerFrame::Pong {
            rid: Some("r".into()),
        };
        assert_eq!(
            f.encode(Encoding::Json),
            Bytes::from_static(br#"{"type":"pong","rid":"r"}"#)
        );
        let v: Value = rmp_serde::from_slice(&f.encode(Encoding::MsgPack)).unwrap();
        assert_eq!(v, json!({"type":"pong","rid":"r"}));

        let e = RequestError {
            room: true,
            team: Some("t".into()),
            ..RequestError::new(ErrorCode::NotJoined, "m")
        };
        let v: Value = serde_json::from_slice(&e.into_frame().encode(Encoding::Json)).unwrap();
        assert_eq!(
            v,
            json!({"type":"room:error","code":"not_joined","message":"m","team":"t"})
        );
    }
}
