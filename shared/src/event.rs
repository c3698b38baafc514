//! The durable event model: what the append script writes to a team stream, the ingest
//! streams and the team channel, and how the gateway and worker read it back.
//!
//! A stream entry holds `k` (kind), `seq` (the message it concerns), `src` (the session that
//! caused it, so the gateway does not echo an event to its sender) and `d` (the kind's data
//! as JSON). The entry id of the team stream is `<offset>-0`; ingest entries carry the
//! team and offset as fields. Pub/sub messages hold the same parts, newline-separated.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of durable event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Message,
    Edit,
    Delete,
    Receipt,
    Pin,
    Unpin,
    React,
    Unreact,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::Receipt => "receipt",
            EventKind::Pin => "pin",
            EventKind::Unpin => "unpin",
            EventKind::React => "react",
            EventKind::Unreact => "unreact",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "message" => Some(EventKind::Message),
            "edit" => Some(EventKind::Edit),
            "delete" => Some(EventKind::Delete),
            "receipt" => Some(EventKind::Receipt),
            "pin" => Some(EventKind::Pin),
            "unpin" => Some(EventKind::Unpin),
            "react" => Some(EventKind::React),
            "unreact" => Some(EventKind::Unreact),
            _ => None,
        }
    }
}

/// The data of a new message, as stored in `d`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    pub id: String,
    pub client_id: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    pub ts: i64,
    /// The seq of the top-level message this one replies to (a thread reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Users the message mentions (each told with `mention`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// Files the message links to (uploaded by the application, not through teamchat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file a message links to: its place and what a client needs to show it before
/// fetching it. Validated by the gateway (`https://` URLs, sizes, a MIME type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_url: Option<String>,
}

/// The data of an edit (`seq` is the edited message).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditData {
    pub user: String,
    pub body: String,
    pub ts: i64,
}

/// The data of a delete or a read receipt: who, and when. For a receipt, `seq` is the
/// message read up to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorData {
    pub user: String,
    pub ts: i64,
}

/// The data of a reaction added or removed (`seq` is the message): who, which emoji, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReactionData {
    pub user: String,
    pub emoji: String,
    pub ts: i64,
}

/// A durable event's data, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum EventData {
    Message(MessageData),
    Edit(EditData),
    Delete(ActorData),
    Receipt(ActorData),
    /// `seq` was pinned (or unpinned) by `user`.
    Pin(ActorData),
    Unpin(ActorData),
    /// `user` reacted to `seq` with `emoji` (or took the reaction back).
    React(ReactionData),
    Unreact(ReactionData),
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Message(_) => EventKind::Message,
            EventData::Edit(_) => EventKind::Edit,
            EventData::Delete(_) => EventKind::Delete,
            EventData::Receipt(_) => EventKind::Receipt,
            EventData::Pin(_) => EventKind::Pin,
            EventData::Unpin(_) => EventKind::Unpin,
            EventData::React(_) => EventKind::React,
            EventData::Unreact(_) => EventKind::Unreact,
        }
    }

    pub fn decode(kind: EventKind, json: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            EventKind::Message => EventData::Message(serde_json::from_slice(json)?),
            EventKind::Edit => EventData::Edit(serde_json::from_slice(json)?),
            EventKind::Delete => EventData::Delete(serde_json::from_slice(json)?),
            EventKind::Receipt => EventData::Receipt(serde_json::from_slice(json)?),
            EventKind::Pin => EventData::Pin(serde_json::from_slice(json)?),
            EventKind::Unpin => EventData::Unpin(serde_json::from_slice(json)?),
            EventKind::React => EventData::React(serde_json::from_slice(json)?),
            EventKind::Unreact => EventData::Unreact(serde_json::from_slice(json)?),
        })
    }

    pub fn encode(&self) -> String {
        let encoded = match self {
            EventData::Message(d) => serde_json::to_string(d),
            EventData::Edit(d) => serde_json::to_string(d),
            EventData::Delete(d)
            | EventData::Receipt(d)
            | EventData::Pin(d)
            | EventData::Unpin(d) => serde_json::to_string(d),
            EventData::React(d) | EventData::Unreact(d) => serde_json::to_string(d),
        };
        encoded.expect("event data encodes as JSON")
    }

    /// The user who caused the event.
    pub fn user(&self) -> &str {
        match self {
            EventData::Message(d) => &d.user,
            EventData::Edit(d) => &d.user,
            EventData::Delete(d)
            | EventData::Receipt(d)
            | EventData::Pin(d)
            | EventData::Unpin(d) => &d.user,
            EventData::React(d) | EventData::Unreact(d) => &d.user,
        }
    }

    pub fn ts(&self) -> i64 {
        match self {
            EventData::Message(d) => d.ts,
            EventData::Edit(d) => d.ts,
            EventData::Delete(d)
            | EventData::Receipt(d)
            | EventData::Pin(d)
            | EventData::Unpin(d) => d.ts,
            EventData::React(d) | EventData::Unreact(d) => d.ts,
        }
    }
}

/// One durable event of a team, as read back from a stream or the team channel.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub team: String,
    pub offset: u64,
    pub seq: u64,
    pub src: String,
    pub data: EventData,
    /// Credits the event cost its user (ingest entries carry it; 0 elsewhere).
    pub cost: u64,
}

impl StreamEvent {
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }
}

/// Why a stored event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("bad field {0}")]
    Bad(&'static str),
    #[error("bad data: {0}")]
    Data(#[from] serde_json::Error),
}

/// An ephemeral event: published on the team channel only, never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ephemeral {
    TypingStart,
    TypingStop,
    /// Published by the presence script only.
    PresenceOnline,
    PresenceOffline,
}

impl Ephemeral {
    pub fn as_str(&self) -> &'static str {
        match self {
            Ephemeral::TypingStart => "typing:start",
            Ephemeral::TypingStop => "typing:stop",
            Ephemeral::PresenceOnline => "presence:online",
            Ephemeral::PresenceOffline => "presence:offline",
        }
    }

    /// The pub/sub payload: `!kind \n src \n user`. Durable payloads start with an epoch,
    /// which is hex, so the `!` tells them apart.
    pub fn encode(&self, src: &str, user: &str) -> String {
        format!("!{}\n{src}\n{user}", self.as_str())
    }
}

/// A pub/sub message of the team channel.
#[derive(Debug)]
pub enum Published {
    /// A durable event: `epoch \n offset \n kind \n seq \n src \n data`.
    Durable {
        epoch: String,
        event: Box<StreamEvent>,
    },
    /// An ephemeral event caused by `user` on session `src`.
    Ephemeral {
        kind: Ephemeral,
        src: String,
        user: String,
    },
}

impl Published {
    pub fn parse(team: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(payload).map_err(|_| DecodeError::Bad("utf8"))?;
        if let Some(rest) = text.strip_prefix('!') {
            let mut parts = rest.splitn(3, '\n');
            let mut next = |name| parts.next().ok_or(DecodeError::Missing(name));
            let kind = match next("kind")? {
                "typing:start" => Ephemeral::TypingStart,
                "typing:stop" => Ephemeral::TypingStop,
                "presence:online" => Ephemeral::PresenceOnline,
                "presence:offline" => Ephemeral::PresenceOffline,
                _ => return Err(DecodeError::Bad("kind")),
            };
            let src = next("src")?.to_owned();
            let user = next("user")?.to_owned();
            return Ok(Published::Ephemeral { kind, src, user });
        }
        let mut parts = text.splitn(6, '\n');
        let mut next = |name| parts.next().ok_or(DecodeError::Missing(name));
        let epoch = next("epoch")?.to_owned();
        let offset = next("offset")?
            .parse()
            .map_err(|_| DecodeError::Bad("offset"))?;
        let kind = EventKind::parse(next("kind")?).ok_or(DecodeError::Bad("kind"))?;
        let seq = next("seq")?.parse().map_err(|_| DecodeError::Bad("seq"))?;
        let src = next("src")?.to_owned();
        let data = EventData::decode(kind, next("data")?.as_bytes())?;
        Ok(Published::Durable {
            epoch,
            event: Box::new(StreamEvent {
                team: team.to_owned(),
                offset,
                seq,
                src,
                data,
                cost: 0,
            }),
        })
    }
}

/// The fields of a stream entry, as `(name, value)` pairs, whichever stream it came from.
pub fn from_fields<'a>(
    team: Option<&str>,
    offset: Option<u64>,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<StreamEvent, DecodeError> {
    let (mut team, mut offset) = (team.map(str::to_owned), offset);
    let (mut kind, mut seq, mut src, mut data) = (None, None, None, None::<&[u8]>);
    let mut cost = 0;
    for (name, value) in fields {
        let text = || std::str::from_utf8(value).map_err(|_| DecodeError::Bad("utf8"));
        match name {
            "team" => team = Some(text()?.to_owned()),
            "off" => offset = Some(text()?.parse().map_err(|_| DecodeError::Bad("off"))?),
            "k" => kind = Some(EventKind::parse(text()?).ok_or(DecodeError::Bad("k"))?),
            "seq" => seq = Some(text()?.parse().map_err(|_| DecodeError::Bad("seq"))?),
            "src" => src = Some(text()?.to_owned()),
            "d" => data = Some(value),
            "c" => cost = text()?.parse().map_err(|_| DecodeError::Bad("c"))?,
            _ => {}
        }
    }
    let kind = kind.ok_or(DecodeError::Missing("k"))?;
    Ok(StreamEvent {
        team: team.ok_or(DecodeError::Missing("team"))?,
        offset: offset.ok_or(DecodeError::Missing("off"))?,
        seq: seq.ok_or(DecodeError::Missing("seq"))?,
        src: src.unwrap_or_default(),
        data: EventData::decode(kind, data.ok_or(DecodeError::Missing("d"))?)?,
        cost,
    })
}

/// The offset of a team-stream entry id `<offset>-0`.
pub fn offset_of_entry_id(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// The `(name, value)` pairs of a stream entry read with redis-rs; non-string values are
/// passed over.
pub fn entry_fields(
    map: &std::collections::HashMap<String, redis::Value>,
) -> impl Iterator<Item = (&str, &[u8])> {
    map.iter().filter_map(|(name, value)| match value {
        redis::Value::BulkString(bytes) => Some((name.as_str(), bytes.as_slice())),
        redis::Value::SimpleString(text) => Some((name.as_str(), text.as_bytes())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data() -> MessageData {
        MessageData {
            id: "m1".into(),
            client_id: "c1".into(),
            user: "u1".into(),
            name: Some("Ann".into()),
            body: "hi\nthere".into(),
            meta: Some(serde_json::json!({"k": 1})),
            ts: 1_763_900_000_123,
            parent: None,
            mentions: vec!["ben".into()],
            attachments: Vec::new(),
        }
    }

    #[test]
    fn published_message_round_trips() {
        let d = serde_json::to_string(&data()).unwrap();
        let payload = format!("ep1\n42\nmessage\n7\nsess\n{d}");
        let Published::Durable { epoch, event } =
            Published::parse("t1", payload.as_bytes()).unwrap()
        else {
            panic!("durable expected")
        };
        assert_eq!(epoch, "ep1");
        assert_eq!(event.offset, 42);
        assert_eq!(event.seq, 7);
        assert_eq!(event.src, "sess");
        assert_eq!(event.data, EventData::Message(data()));
    }

    #[test]
    fn published_typing_round_trips() {
        let payload = Ephemeral::TypingStop.encode("s1", "u1");
        let Published::Ephemeral { kind, src, user } =
            Published::parse("t", payload.as_bytes()).unwrap()
        else {
            panic!("ephemeral expected")
        };
        assert_eq!(
            (kind, src.as_str(), user.as_str()),
            (Ephemeral::TypingStop, "s1", "u1")
        );
    }

    #[test]
    fn truncated_publish_is_an_error() {
        assert!(Published::parse("t1", b"ep1\n42\nmessage").is_err());
        assert!(Published::parse("t1", b"ep1\nx\nmessage\n1\ns\n{}").is_err());
    }

    #[test]
    fn entry_ids_give_offsets() {
        assert_eq!(offset_of_entry_id("17-0"), Some(17));
        assert_eq!(offset_of_entry_id("17-1"), None);
    }

    /// A pub/sub payload of arbitrary parts, newline-separated as published ones are.
    fn any_payload() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            Just(b"!typing:start".to_vec()),
            Just(b"message".to_vec()),
            Just(b"7".to_vec()),
            prop::collection::vec(any::<u8>(), 0..16),
        ];
        prop::collection::vec(part, 0..8).prop_map(|parts| parts.join(&b'\n'))
    }

    proptest! {
        #[test]
        fn fuzz_published_messages(payload in any_payload(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Published::parse("t", &payload);
            let _ = Published::parse("t", &bytes);
        }

        #[test]
        fn fuzz_stream_entries(fields in prop::collection::vec(
            (
                prop::sample::select(vec!["team", "off", "k", "seq", "src", "d", "c", "x"]),
                prop_oneof![
                    Just(b"message".to_vec()),
                    Just(b"12".to_vec()),
                    Just(br#"{"id":"i","client_id":"c","user":"u","body":"b","ts":1}"#.to_vec()),
                    prop::collection::vec(any::<u8>(), 0..64),
                ],
            ),
            0..8,
        )) {
            let fields = fields.iter().map(|(name, value)| (*name, value.as_slice()));
            if let Ok(event) = from_fields(None, None, fields) {
                // What decodes encodes again, the same.
                let again = EventData::decode(event.kind(), event.data.encode().as_bytes());
                prop_assert_eq!(again.unwrap(), event.data);
            }
        }
    }
}
