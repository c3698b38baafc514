//! The client protocol (PROTOCOL.md): request frames a client sends, frames the server sends,
//! and their two encodings, JSON text and MessagePack maps.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{EventData, MessageData, StreamEvent};

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

/// Error codes of `error` / `room:error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Forbidden,
    NotJoined,
    TooManyRooms,
    RateLimited,
    TooLarge,
    QuotaExceeded,
    NotFound,
    Unavailable,
}

/// A request that could not be carried out: answered with `error` or `room:error`.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    pub rid: Option<String>,
    pub team: Option<String>,
    /// `room:join`/`room:leave` are answered with `room:error`, everything else with `error`.
    pub room: bool,
    /// With `rate_limited`: when the request would be accepted.
    pub retry_after_ms: Option<u64>,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rid: None,
            team: None,
            room: false,
            retry_after_ms: None,
        }
    }

    pub fn into_frame(self) -> ServerFrame {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            rid: self.rid,
            team: self.team,
            retry_after_ms: self.retry_after_ms,
        };
        if self.room {
            ServerFrame::RoomError(body)
        } else {
            ServerFrame::Error(body)
        }
    }
}

/// `since` of a `room:join`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Since {
    pub offset: String,
    pub epoch: String,
}

/// A client request, decoded and with its fields checked for shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    RoomJoin {
        team: String,
        since: Option<Since>,
    },
    RoomLeave {
        team: String,
    },
    MessageSend {
        team: String,
        client_id: String,
        body: String,
        meta: Option<Value>,
    },
    MessageEdit {
        team: String,
        seq: u64,
        body: String,
    },
    MessageDelete {
        team: String,
        seq: u64,
    },
    ReceiptUpdate {
        team: String,
        seq: u64,
    },
    Ping,
    TypingStart {
        team: String,
    },
    TypingStop {
        team: String,
    },
    TokenRefresh {
        token: String,
    },
}

impl Request {
    /// The request's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::RoomJoin { .. } => "room:join",
            Request::RoomLeave { .. } => "room:leave",
            Request::MessageSend { .. } => "message:send",
            Request::MessageEdit { .. } => "message:edit",
            Request::MessageDelete { .. } => "message:delete",
            Request::ReceiptUpdate { .. } => "receipt:update",
            Request::Ping => "ping",
            Request::TypingStart { .. } => "typing:start",
            Request::TypingStop { .. } => "typing:stop",
            Request::TokenRefresh { .. } => "token:refresh",
        }
    }
}

/// A decoded client frame: its request and request id.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientFrame {
    pub rid: Option<String>,
    pub request: Request,
}

/// Size limits checked while decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub max_meta: usize,
}

#[derive(Deserialize)]
struct JoinFields {
    #[serde(default)]
    since: Option<Value>,
}

#[derive(Deserialize)]
struct SendFields {
    team: String,
    client_id: String,
    body: String,
    #[serde(default)]
    meta: Option<Value>,
}

/// Decodes one client frame of the given encoding (PROTOCOL.md, Frames and Edge cases).
pub fn decode_client(
    payload: &[u8],
    encoding: Encoding,
    limits: Limits,
) -> Result<ClientFrame, RequestError> {
    let bad = |message: &str| RequestError::new(ErrorCode::BadRequest, message);
    let value: Value = match encoding {
        Encoding::Json => {
            serde_json::from_slice(payload).map_err(|_| bad("frame is not valid JSON"))?
        }
        Encoding::MsgPack => {
            rmp_serde::from_slice(payload).map_err(|_| bad("frame is not valid MessagePack"))?
        }
    };
    let Value::Object(mut object) = value else {
        return Err(bad("frame is not an object"));
    };
    let rid = match object.remove("rid") {
        None | Some(Value::Null) => None,
        Some(Value::String(rid)) if rid.len() <= 64 => Some(rid),
        Some(_) => return Err(bad("rid must be a string of at most 64 bytes")),
    };
    let with_rid = |mut e: RequestError| {
        e.rid = rid.clone();
        e
    };
    let Some(Value::String(kind)) = object.remove("type") else {
        return Err(with_rid(bad("type must be a string")));
    };
    let request = match kind.as_str() {
        "room:join" | "room:leave" => {
            let room_error = |message: &str, team: Option<String>| RequestError {
                room: true,
                team,
                ..with_rid(bad(message))
            };
            let team = room_team(&object).map_err(|m| room_error(m, None))?;
            if kind == "room:leave" {
                Request::RoomLeave { team }
            } else {
                let fields: JoinFields = serde_json::from_value(Value::Object(object))
                    .map_err(|_| room_error("malformed room:join", Some(team.clone())))?;
                let since = match fields.since {
                    None | Some(Value::Null) => None,
                    Some(since) => Some(
                        parse_since(since)
                            .ok_or_else(|| room_error("malformed since", Some(team.clone())))?,
                    ),
                };
                Request::RoomJoin { team, since }
            }
        }
        "message:send" => {
            let fields: SendFields = serde_json::from_value(Value::Object(object))
                .map_err(|e| with_rid(bad(&format!("malformed message:send: {e}"))))?;
            check_team(&fields.team).map_err(&with_rid)?;
            let team_err = |e: RequestError| RequestError {
                team: Some(fields.team.clone()),
                ..with_rid(e)
            };
            if fields.client_id.is_empty() || fields.client_id.len() > 64 {
                return Err(team_err(bad("client_id must be 1..64 bytes")));
            }
            // PostgreSQL text and jsonb cannot hold NUL: refuse it here, not in the worker.
            if fields.body.contains('\0')
                || fields
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.to_string().contains("\\u0000"))
            {
                return Err(team_err(bad("body and meta cannot contain NUL")));
            }
            if fields.body.len() > limits.max_body {
                return Err(team_err(RequestError::new(
                    ErrorCode::TooLarge,
                    format!("body is over {} bytes", limits.max_body),
                )));
            }
            let meta = match fields.meta {
                None | Some(Value::Null) => None,
                Some(meta @ Value::Object(_)) => {
                    let size = serde_json::to_vec(&meta)
                        .map(|v| v.len())
                        .unwrap_or(usize::MAX);
                    if size > limits.max_meta {
                        return Err(team_err(RequestError::new(
                            ErrorCode::TooLarge,
                            format!("meta is over {} bytes", limits.max_meta),
                        )));
                    }
                    Some(meta)
                }
                Some(_) => return Err(team_err(bad("meta must be an object"))),
            };
            Request::MessageSend {
                team: fields.team,
                client_id: fields.client_id,
                body: fields.body,
                meta,
            }
        }
        "ping" => Request::Ping,
        "message:edit" | "message:delete" | "receipt:update" => {
            let team = match object.get("team") {
                Some(Value::String(team)) if crate::ids::is_valid_id(team) => team.clone(),
                _ => return Err(with_rid(bad("team is missing or not a valid id"))),
            };
            let team_err = |e: RequestError| RequestError {
                team: Some(team.clone()),
                ..with_rid(e)
            };
            let Some(seq) = object.get("seq").and_then(Value::as_u64) else {
                return Err(team_err(bad("seq must be a non-negative integer")));
            };
            match kind.as_str() {
                "message:edit" => {
                    let Some(Value::String(body)) = object.remove("body") else {
                        return Err(team_err(bad("body must be a string")));
                    };
                    if body.contains('\0') {
                        return Err(team_err(bad("body cannot contain NUL")));
                    }
                    if body.len() > limits.max_body {
                        return Err(team_err(RequestError::new(
                            ErrorCode::TooLarge,
                            format!("body is over {} bytes", limits.max_body),
                        )));
                    }
                    Request::MessageEdit { team, seq, body }
                }
                "message:delete" => Request::MessageDelete { team, seq },
                _ => Request::ReceiptUpdate { team, seq },
            }
        }
        "typing:start" | "typing:stop" => {
            let team = match object.get("team") {
                Some(Value::String(team)) if crate::ids::is_valid_id(team) => team.clone(),
                _ => return Err(with_rid(bad("team is missing or not a valid id"))),
            };
            if kind == "typing:start" {
                Request::TypingStart { team }
            } else {
                Request::TypingStop { team }
            }
        }
        "token:refresh" => match object.remove("token") {
            Some(Value::String(token)) => Request::TokenRefresh { token },
            _ => return Err(with_rid(bad("token must be a string"))),
        },
        other => {
            return Err(with_rid(RequestError::new(
                ErrorCode::UnknownType,
                format!("unknown type {other:?}"),
            )));
        }
    };
    Ok(ClientFrame { rid, request })
}

fn room_team(object: &Map<String, Value>) -> Result<String, &'static str> {
    match object.get("team") {
        Some(Value::String(team)) if crate::ids::is_valid_id(team) => Ok(team.clone()),
        Some(_) => Err("team is not a valid id"),
        None => Err("team is missing"),
    }
}

fn check_team(team: &str) -> Result<(), RequestError> {
    if crate::ids::is_valid_id(team) {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::BadRequest,
            "team is not a valid id",
        ))
    }
}

fn parse_since(value: Value) -> Option<Since> {
    let since: Since = serde_json::from_value(value).ok()?;
    since.offset.parse::<u64>().ok()?;
    (!since.epoch.is_empty()).then_some(since)
}

/// The body of `error` / `room:error`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

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
    },
    #[serde(rename = "message:ack")]
    MessageAck {
        /// Present in the ack of a `message:send`.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        team: String,
        seq: u64,
        id: String,
        offset: String,
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
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_body: 16,
        max_meta: 32,
    };

    fn decode_json(v: Value) -> Result<ClientFrame, RequestError> {
        decode_client(&serde_json::to_vec(&v).unwrap(), Encoding::Json, LIMITS)
    }

    #[test]
    fn send_decodes_with_rid() {
        let f = decode_json(json!({"type":"message:send","rid":"r1","team":"t","client_id":"c","body":"hi","extra":1}))
            .unwrap();
        assert_eq!(f.rid.as_deref(), Some("r1"));
        assert_eq!(
            f.request,
            Request::MessageSend {
                team: "t".into(),
                client_id: "c".into(),
                body: "hi".into(),
                meta: None
            }
        );
    }

    #[test]
    fn msgpack_frames_decode_like_json() {
        let bytes = rmp_serde::to_vec_named(&json!({"type":"room:join","team":"t1"})).unwrap();
        let f = decode_client(&bytes, Encoding::MsgPack, LIMITS).unwrap();
        assert_eq!(
            f.request,
            Request::RoomJoin {
                team: "t1".into(),
                since: None
            }
        );
    }

    #[test]
    fn errors_carry_codes_rids_and_kinds() {
        let e = decode_json(json!({"type":"nope","rid":"x"})).unwrap_err();
        assert_eq!(
            (e.code, e.rid.as_deref(), e.room),
            (ErrorCode::UnknownType, Some("x"), false)
        );

        let e = decode_json(json!({"type":"room:join","team":"bad team"})).unwrap_err();
        assert_eq!((e.code, e.room), (ErrorCode::BadRequest, true));

        let e = decode_json(json!({"type":"room:leave"})).unwrap_err();
        assert_eq!((e.code, e.room), (ErrorCode::BadRequest, true));

        let e =
            decode_json(json!({"type":"room:join","team":"t","since":{"offset":"x","epoch":"e"}}))
                .unwrap_err();
        assert_eq!((e.code, e.room), (ErrorCode::BadRequest, true));

        let e = decode_json(
            json!({"type":"message:send","team":"t","client_id":"c","body":"x".repeat(17)}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);

        let e = decode_json(json!({"type":"message:send","team":"t","client_id":"c","body":"b","meta":{"k":"x".repeat(40)}}))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);

        let nul =
            decode_json(json!({"type":"message:send","team":"t","client_id":"c","body":"a\u{0}b"}));
        assert_eq!(nul.unwrap_err().code, ErrorCode::BadRequest);
        let nul = decode_json(
            json!({"type":"message:send","team":"t","client_id":"c","body":"b","meta":{"k":"\u{0}"}}),
        );
        assert_eq!(nul.unwrap_err().code, ErrorCode::BadRequest);

        let e = decode_json(json!({"type":"message:send","team":"t","client_id":"","body":"b"}))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);

        let e = decode_client(b"{not json", Encoding::Json, LIMITS).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_json(json!([1, 2])).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

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
