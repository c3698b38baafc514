//! Frames a client sends: one decoder per request type, each checking its fields' shape
//! and size before the request reaches a session (docs/protocol.md, Frames and Limits).
//! Its unit tests make up a quarter of the file.

use serde::Deserialize;
use serde_json::{Map, Value};
use teamchat_shared::event::Attachment;
use teamchat_shared::ids::is_valid_id;

use super::error::{ErrorCode, RequestError};
use super::{Encoding, chat};

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
        /// The thread's top-level message, for a reply.
        parent: Option<u64>,
        mentions: Vec<String>,
        attachments: Vec<Attachment>,
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
    /// `message:pin` (`pin`) or `message:unpin`.
    MessagePin {
        team: String,
        seq: u64,
        pin: bool,
    },
    /// `reaction:add` (`add`) or `reaction:remove`.
    Reaction {
        team: String,
        seq: u64,
        emoji: String,
        add: bool,
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
            Request::MessagePin { pin: true, .. } => "message:pin",
            Request::MessagePin { pin: false, .. } => "message:unpin",
            Request::Reaction { add: true, .. } => "reaction:add",
            Request::Reaction { add: false, .. } => "reaction:remove",
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

/// The deepest `meta` accepted, in either encoding: every reader of what is appended (the
/// gateways, the workers, PostgreSQL's jsonb) must decode it, and serde_json stops at 128.
pub const MAX_META_DEPTH: usize = 32;

/// The deepest MessagePack frame decoded at all: far past any frame that could be
/// accepted (so the `rid` of a `meta` nested too deep is still read, and the error names
/// it), a quarter of rmp-serde's own 1,024, which recurses on a task's stack.
const MAX_MSGPACK_DEPTH: usize = 256;

/// The highest `seq` a request may name: the append script's numbers are doubles, exact to
/// 2^53 (JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// The longest reaction emoji, in bytes (../shared/PROTOCOL.md, "Chat model").
pub const MAX_EMOJI_BYTES: usize = 64;

/// Size limits checked while decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub max_meta: usize,
}

/// Decodes one client frame of the given encoding. Every error carries the frame's `rid`
/// when it could be read.
pub fn decode_client(
    payload: &[u8],
    encoding: Encoding,
    limits: Limits,
) -> Result<ClientFrame, RequestError> {
    let value: Value = match encoding {
        Encoding::Json => match serde_json::from_slice(payload) {
            Ok(value) => value,
            // `JSON.stringify` writes a lone surrogate (half an emoji cut off) as an escape
            // serde_json refuses: it becomes U+FFFD, as the browser's own UTF-8 encoding of
            // that string would have made it.
            Err(_) => replace_lone_surrogates(payload)
                .and_then(|fixed| serde_json::from_slice(&fixed).ok())
                .ok_or_else(|| bad("frame is not valid JSON"))?,
        },
        Encoding::MsgPack => {
            let mut decoder = rmp_serde::Deserializer::from_read_ref(payload);
            decoder.set_max_depth(MAX_MSGPACK_DEPTH);
            Value::deserialize(&mut decoder).map_err(|_| bad("frame is not valid MessagePack"))?
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
    match decode_request(object, limits) {
        Ok(request) => Ok(ClientFrame { rid, request }),
        Err(error) => Err(RequestError { rid, ..error }),
    }
}

/// Routes a frame's fields to the decoder of its `type`.
fn decode_request(mut object: Map<String, Value>, limits: Limits) -> Result<Request, RequestError> {
    let Some(Value::String(kind)) = object.remove("type") else {
        return Err(bad("type must be a string"));
    };
    match kind.as_str() {
        "room:join" => room_join(object),
        "room:leave" => Ok(Request::RoomLeave {
            team: room_team(&object)?,
        }),
        "message:send" => message_send(object, limits),
        "message:edit" => message_edit(object, limits),
        "message:delete" => {
            let (team, seq) = team_and_seq(&object)?;
            Ok(Request::MessageDelete { team, seq })
        }
        "message:pin" | "message:unpin" => {
            let (team, seq) = team_and_seq(&object)?;
            let pin = kind == "message:pin";
            Ok(Request::MessagePin { team, seq, pin })
        }
        "reaction:add" | "reaction:remove" => {
            let (team, seq) = team_and_seq(&object)?;
            let emoji = emoji(&object).map_err(|e| e.in_team(&team))?;
            let add = kind == "reaction:add";
            Ok(Request::Reaction {
                team,
                seq,
                emoji,
                add,
            })
        }
        "receipt:update" => {
            let (team, seq) = team_and_seq(&object)?;
            Ok(Request::ReceiptUpdate { team, seq })
        }
        "typing:start" => Ok(Request::TypingStart {
            team: team(&object)?,
        }),
        "typing:stop" => Ok(Request::TypingStop {
            team: team(&object)?,
        }),
        "token:refresh" => match object.remove("token") {
            Some(Value::String(token)) => Ok(Request::TokenRefresh { token }),
            _ => Err(bad("token must be a string")),
        },
        "ping" => Ok(Request::Ping),
        other => Err(RequestError::new(
            ErrorCode::UnknownType,
            format!("unknown type {other:?}"),
        )),
    }
}

fn room_join(object: Map<String, Value>) -> Result<Request, RequestError> {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default)]
        since: Option<Value>,
    }
    let team = room_team(&object)?;
    let error = |message| bad(message).in_room().in_team(&team);
    let fields: Fields =
        serde_json::from_value(Value::Object(object)).map_err(|_| error("malformed room:join"))?;
    let since = match fields.since {
        None | Some(Value::Null) => None,
        Some(since) => Some(parse_since(since).ok_or_else(|| error("malformed since"))?),
    };
    Ok(Request::RoomJoin { team, since })
}

fn message_send(object: Map<String, Value>, limits: Limits) -> Result<Request, RequestError> {
    #[derive(Deserialize)]
    struct Fields {
        team: String,
        client_id: String,
        body: String,
        #[serde(default)]
        meta: Option<Value>,
        #[serde(default)]
        parent: Option<Value>,
        #[serde(default)]
        mentions: Option<Value>,
        #[serde(default)]
        attachments: Option<Value>,
    }
    let fields: Fields = serde_json::from_value(Value::Object(object))
        .map_err(|e| bad(&format!("malformed message:send: {e}")))?;
    if !is_valid_id(&fields.team) {
        return Err(bad("team is not a valid id"));
    }
    let in_team = |e: RequestError| e.in_team(&fields.team);
    if fields.client_id.is_empty() || fields.client_id.len() > 64 {
        return Err(in_team(bad("client_id must be 1..64 bytes")));
    }
    // Stored as PostgreSQL text, which cannot hold NUL.
    if fields.client_id.contains('\0') {
        return Err(in_team(bad("client_id cannot contain NUL")));
    }
    // PostgreSQL text and jsonb cannot hold NUL: refuse it here, not in the worker.
    if fields.body.contains('\0')
        || fields
            .meta
            .as_ref()
            .is_some_and(|m| m.to_string().contains("\\u0000"))
    {
        return Err(in_team(bad("body and meta cannot contain NUL")));
    }
    check_body(&fields.body, limits).map_err(in_team)?;
    let meta = match fields.meta {
        None | Some(Value::Null) => None,
        Some(meta @ Value::Object(_)) => {
            if deeper_than(&meta, MAX_META_DEPTH) {
                return Err(in_team(bad(&format!(
                    "meta is nested deeper than {MAX_META_DEPTH} levels"
                ))));
            }
            let size = serde_json::to_vec(&meta)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > limits.max_meta {
                return Err(in_team(RequestError::new(
                    ErrorCode::TooLarge,
                    format!("meta is over {} bytes", limits.max_meta),
                )));
            }
            Some(meta)
        }
        Some(_) => return Err(in_team(bad("meta must be an object"))),
    };
    let parent = chat::parent(fields.parent).map_err(|e| in_team(bad(&e)))?;
    let mentions = chat::mentions(fields.mentions).map_err(|e| in_team(bad(&e)))?;
    let attachments = chat::attachments(fields.attachments).map_err(|e| in_team(bad(&e)))?;
    Ok(Request::MessageSend {
        team: fields.team,
        client_id: fields.client_id,
        body: fields.body,
        meta,
        parent,
        mentions,
        attachments,
    })
}

fn message_edit(mut object: Map<String, Value>, limits: Limits) -> Result<Request, RequestError> {
    let (team, seq) = team_and_seq(&object)?;
    let Some(Value::String(body)) = object.remove("body") else {
        return Err(bad("body must be a string").in_team(&team));
    };
    if body.contains('\0') {
        return Err(bad("body cannot contain NUL").in_team(&team));
    }
    check_body(&body, limits).map_err(|e| e.in_team(&team))?;
    Ok(Request::MessageEdit { team, seq, body })
}

/// A message body within `MAX_BODY` (`too_large`).
fn check_body(body: &str, limits: Limits) -> Result<(), RequestError> {
    if body.len() > limits.max_body {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!("body is over {} bytes", limits.max_body),
        ));
    }
    Ok(())
}

/// The `team` of a request answered with `error`.
fn team(object: &Map<String, Value>) -> Result<String, RequestError> {
    match object.get("team") {
        Some(Value::String(team)) if is_valid_id(team) => Ok(team.clone()),
        _ => Err(bad("team is missing or not a valid id")),
    }
}

/// The `team` and `seq` of an edit, delete or receipt.
fn team_and_seq(object: &Map<String, Value>) -> Result<(String, u64), RequestError> {
    let team = team(object)?;
    match object.get("seq").and_then(Value::as_u64) {
        Some(seq) if seq <= MAX_SEQ => Ok((team, seq)),
        Some(_) => Err(bad("seq is out of range").in_team(&team)),
        None => Err(bad("seq must be a non-negative integer").in_team(&team)),
    }
}

/// A reaction's `emoji`: 1..64 bytes of UTF-8 without whitespace or control characters
/// (so it cannot break a client's layout, and the append script may use a tab to join a
/// user and an emoji). Bidi controls and invisible characters count as control
/// characters: they would let one reaction pose as another (`👍` and `👍` + U+200B) or
/// flip the text around it. Joiners, variation selectors and tags, which emoji sequences
/// are made of, are fine.
fn emoji(object: &Map<String, Value>) -> Result<String, RequestError> {
    let refused = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\u{061C}' | '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{2060}' | '\u{FEFF}'
            )
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    match object.get("emoji") {
        Some(Value::String(emoji))
            if (1..=MAX_EMOJI_BYTES).contains(&emoji.len()) && !emoji.chars().any(refused) =>
        {
            Ok(emoji.clone())
        }
        _ => Err(bad(
            "emoji must be 1 to 64 bytes without whitespace or control characters",
        )),
    }
}

/// Whether a value nests arrays and objects more than `levels` deep (the value itself is
/// level 1). Stops looking once past the limit.
pub(crate) fn deeper_than(value: &Value, levels: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return false,
    };
    levels == 0
        || children
            .into_iter()
            .any(|child| deeper_than(child, levels - 1))
}

/// The `team` of `room:join` / `room:leave`, answered with `room:error`.
fn room_team(object: &Map<String, Value>) -> Result<String, RequestError> {
    match object.get("team") {
        Some(Value::String(team)) if is_valid_id(team) => Ok(team.clone()),
        Some(_) => Err(bad("team is not a valid id").in_room()),
        None => Err(bad("team is missing").in_room()),
    }
}

fn parse_since(value: Value) -> Option<Since> {
    let since: Since = serde_json::from_value(value).ok()?;
    since.offset.parse::<u64>().ok()?;
    (!since.epoch.is_empty()).then_some(since)
}

/// The frame with every `\u` escape of a lone surrogate (one not in a high-low pair)
/// replaced by `\ufffd`; `None` when it has none.
fn replace_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    let escape_at = |i: usize| -> Option<u16> {
        let hex = json.get(i..i + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let is_high = |unit: u16| (0xD800..0xDC00).contains(&unit);
    let is_low = |unit: u16| (0xDC00..0xE000).contains(&unit);
    let mut fixed = Vec::with_capacity(json.len());
    let (mut i, mut replaced) = (0, false);
    while i < json.len() {
        if json[i] != b'\\' {
            fixed.push(json[i]);
            i += 1;
            continue;
        }
        let taken = match escape_at(i) {
            Some(high) if is_high(high) && escape_at(i + 6).is_some_and(is_low) => 12,
            Some(unit) if is_high(unit) || is_low(unit) => {
                fixed.extend_from_slice(b"\\ufffd");
                replaced = true;
                i += 6;
                continue;
            }
            Some(_) => 6,
            // Another escape: the backslash and the character it escapes.
            None => 2,
        };
        let end = (i + taken).min(json.len());
        fixed.extend_from_slice(&json[i..end]);
        i = end;
    }
    replaced.then_some(fixed)
}

fn bad(message: &str) -> RequestError {
    RequestError::new(ErrorCode::BadRequest, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use teamchat_shared::event::{EventData, EventKind, MessageData};

    const LIMITS: Limits = Limits {
        max_body: 16,
        max_meta: 32,
    };

    fn decode_json(v: Value) -> Result<ClientFrame, RequestError> {
        decode_client(&serde_json::to_vec(&v).unwrap(), Encoding::Json, LIMITS)
    }

    /// A frame nested past what serde_json decodes is refused in MessagePack too, without
    /// recursing deeper: on half a runtime thread's stack, where the 256 levels allowed fit
    /// (≈ 2 KiB each in a debug build) and 1,000 would overflow it.
    #[test]
    fn deep_msgpack_frames_are_refused_without_deep_recursion() {
        let mut frame = vec![0x91; 1_000]; // arrays of one element, nested
        frame.push(0xc0);
        let refused = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || decode_client(&frame, Encoding::MsgPack, LIMITS).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
    }

    /// A lone surrogate escape, as `JSON.stringify` writes half an emoji, is read as U+FFFD
    /// (the request goes on, with its `rid`); a whole pair stays the emoji it is.
    #[test]
    fn lone_surrogate_escapes_become_replacement_characters() {
        let frame = |body: &str| {
            format!(
                r#"{{"type":"message:send","rid":"r","team":"t","client_id":"c","body":"{body}"}}"#
            )
        };
        let limits = Limits {
            max_body: 64,
            max_meta: 32,
        };
        for (escaped, read) in [
            (r"a\udc00b", "a\u{fffd}b"),
            (r"\ud83d", "\u{fffd}"),
            (r"\ud83d\ude00", "\u{1f600}"),
            (r"\ud83d\ud83d\ude00", "\u{fffd}\u{1f600}"),
            (r"\\udc00", r"\udc00"),
        ] {
            let decoded = decode_client(frame(escaped).as_bytes(), Encoding::Json, limits)
                .unwrap_or_else(|e| panic!("{escaped}: {e:?}"));
            assert_eq!(decoded.rid.as_deref(), Some("r"));
            let Request::MessageSend { body, .. } = decoded.request else {
                panic!("{escaped}: not a send");
            };
            assert_eq!(body, read, "{escaped}");
        }
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
                meta: None,
                parent: None,
                mentions: Vec::new(),
                attachments: Vec::new(),
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
    fn errors_carry_codes_rids_teams_and_kinds() {
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
        assert_eq!(
            (e.code, e.room, e.team.as_deref()),
            (ErrorCode::BadRequest, true, Some("t"))
        );

        let e = decode_json(
            json!({"type":"message:send","team":"t","client_id":"c","body":"x".repeat(17)}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.team.as_deref()),
            (ErrorCode::TooLarge, Some("t"))
        );

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

        let e =
            decode_json(json!({"type":"message:edit","rid":"r","team":"t","seq":-1,"body":"b"}))
                .unwrap_err();
        assert_eq!(
            (e.code, e.rid.as_deref(), e.team.as_deref()),
            (ErrorCode::BadRequest, Some("r"), Some("t"))
        );

        let e = decode_client(b"{not json", Encoding::Json, LIMITS).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_json(json!([1, 2])).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    /// Limits as deployed, so that most generated frames get past them.
    const DEPLOYED: Limits = Limits {
        max_body: 16_384,
        max_meta: 4_096,
    };

    /// Any JSON value, nested up to 40 levels (past the `meta` limit), strings of any
    /// characters, NUL included.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(40, 160, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Deep chains of objects and arrays, which a size-bounded tree rarely grows.
    fn deep_meta() -> impl Strategy<Value = Value> {
        (0usize..48, any::<bool>()).prop_map(|(levels, arrays)| {
            (0..levels).fold(json!({"k": 1}), |inner, _| {
                if arrays {
                    json!({"k": [inner]})
                } else {
                    json!({"k": inner})
                }
            })
        })
    }

    /// A frame of a known (or unknown) `type` with arbitrary values in the fields the
    /// requests read.
    fn any_frame() -> impl Strategy<Value = Value> {
        let kinds = prop::sample::select(vec![
            "room:join",
            "room:leave",
            "message:send",
            "message:edit",
            "message:delete",
            "message:pin",
            "message:unpin",
            "reaction:add",
            "reaction:remove",
            "receipt:update",
            "typing:start",
            "typing:stop",
            "token:refresh",
            "ping",
            "nope",
        ]);
        let names = prop::sample::select(vec![
            "team",
            "client_id",
            "body",
            "meta",
            "seq",
            "since",
            "rid",
            "token",
            "extra",
            "mentions",
            "attachments",
            "emoji",
        ]);
        let plausible = prop_oneof![
            Just(json!(["ann", "ben"])),
            Just(json!([{"url": "https://e.com/a", "name": "a\u{0}", "mime": "a/b", "size": 1}])),
            Just(json!([{"url": "https://e.com/a", "name": "a", "mime": "a/b", "size": 1}])),
            Just(json!("t")),
            Just(json!("c1")),
            Just(json!("a\u{0}b")),
            Just(json!(3)),
            Just(json!(u64::MAX)),
            Just(json!({"offset": "1", "epoch": "e"})),
            deep_meta(),
            any_json(),
        ];
        (kinds, prop::collection::btree_map(names, plausible, 0..7)).prop_map(|(kind, fields)| {
            let mut object: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("type".into(), Value::from(kind));
            Value::Object(object)
        })
    }

    /// The properties every decoded frame keeps: an error's message is bounded; what a
    /// `message:send` would append decodes again, unchanged, and holds nothing PostgreSQL
    /// refuses.
    fn check(payload: &[u8], encoding: Encoding) {
        match decode_client(payload, encoding, DEPLOYED) {
            Err(e) => assert!(e.message.len() <= super::super::error::MAX_MESSAGE),
            Ok(ClientFrame {
                request:
                    Request::MessageSend {
                        client_id,
                        body,
                        meta,
                        parent,
                        mentions,
                        attachments,
                        ..
                    },
                ..
            }) => {
                assert!(!client_id.contains('\0') && !body.contains('\0'));
                assert!(
                    !meta
                        .as_ref()
                        .is_some_and(|m| deeper_than(m, MAX_META_DEPTH))
                );
                let data = EventData::Message(MessageData {
                    id: "id".into(),
                    client_id,
                    user: "u".into(),
                    name: None,
                    body,
                    meta,
                    ts: 1,
                    parent,
                    mentions,
                    attachments,
                });
                let encoded = data.encode();
                assert!(!encoded.contains("\\u0000"), "{encoded}");
                let decoded = EventData::decode(EventKind::Message, encoded.as_bytes());
                assert_eq!(decoded.expect("appended data decodes"), data);
            }
            Ok(ClientFrame {
                request: Request::MessageEdit { seq, .. } | Request::ReceiptUpdate { seq, .. },
                ..
            }) => assert!(seq <= MAX_SEQ),
            Ok(_) => {}
        }
    }

    proptest! {
        #[test]
        fn fuzz_client_frames_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes, Encoding::Json);
            check(&bytes, Encoding::MsgPack);
        }

        #[test]
        fn fuzz_message_sends(
            client_id in prop_oneof![Just("c1".to_owned()), Just("a\u{0}b".to_owned()), ".{0,70}"],
            body in prop_oneof![Just("b".to_owned()), ".{0,40}"],
            meta in prop_oneof![Just(Value::Null), deep_meta(), any_json()],
            msgpack in any::<bool>(),
        ) {
            let frame = json!({"type": "message:send", "team": "t", "client_id": client_id,
                               "body": body, "meta": meta});
            if msgpack {
                check(&rmp_serde::to_vec_named(&frame).unwrap(), Encoding::MsgPack);
            } else {
                check(&serde_json::to_vec(&frame).unwrap(), Encoding::Json);
            }
        }

        #[test]
        fn fuzz_client_frames_of_every_type(frame in any_frame()) {
            check(&serde_json::to_vec(&frame).unwrap(), Encoding::Json);
            check(&rmp_serde::to_vec_named(&frame).unwrap(), Encoding::MsgPack);
        }
    }
}
