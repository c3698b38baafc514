//! A batch laid out as the columns its one statement binds (UNNEST arrays): messages,
//! credit ledger rows, edits/deletes/receipts one per key, and each team's offsets.

use std::collections::BTreeMap;

use teamchat_shared::event::{EditData, EventData, MessageData, StreamEvent};

/// The batch's messages, column by column, for one UNNEST insert.
#[derive(Default)]
pub(super) struct MessageColumns<'a> {
    pub(super) team: Vec<&'a str>,
    pub(super) seq: Vec<i64>,
    pub(super) id: Vec<&'a str>,
    pub(super) client_id: Vec<&'a str>,
    pub(super) user_id: Vec<&'a str>,
    pub(super) name: Vec<Option<&'a str>>,
    pub(super) body: Vec<&'a str>,
    pub(super) meta: Vec<Option<String>>,
    pub(super) ts: Vec<i64>,
    pub(super) offset: Vec<i64>,
    /// As JSON arrays (PostgreSQL's UNNEST would flatten an array of arrays).
    pub(super) mentions: Vec<Option<String>>,
    pub(super) attachments: Vec<Option<String>>,
    pub(super) parent: Vec<Option<i64>>,
}

impl<'a> MessageColumns<'a> {
    pub(super) fn new(messages: &BTreeMap<(&'a str, u64), (u64, &'a MessageData)>) -> Self {
        let mut columns = Self::default();
        for ((team, seq), (offset, d)) in messages {
            columns.team.push(team);
            columns.seq.push(*seq as i64);
            columns.id.push(&d.id);
            columns.client_id.push(&d.client_id);
            columns.user_id.push(&d.user);
            columns.name.push(d.name.as_deref());
            columns.body.push(&d.body);
            columns.meta.push(d.meta.as_ref().map(|m| m.to_string()));
            columns.ts.push(d.ts);
            columns.offset.push(*offset as i64);
            columns.parent.push(d.parent.map(|p| p as i64));
            let json = |value: serde_json::Value| value.to_string();
            columns
                .mentions
                .push((!d.mentions.is_empty()).then(|| json(serde_json::json!(d.mentions))));
            columns
                .attachments
                .push((!d.attachments.is_empty()).then(|| json(serde_json::json!(d.attachments))));
        }
        columns
    }
}

/// The charged events, column by column, for the credit ledger.
#[derive(Default)]
pub(super) struct LedgerColumns<'a> {
    pub(super) team: Vec<&'a str>,
    pub(super) offset: Vec<i64>,
    pub(super) user_id: Vec<&'a str>,
    pub(super) kind: Vec<&'static str>,
    pub(super) cost: Vec<i64>,
}

impl<'a> LedgerColumns<'a> {
    pub(super) fn new(mut events: Vec<&'a StreamEvent>) -> Self {
        // Rows are locked in one order in every transaction, so concurrent workers cannot
        // deadlock on them.
        events.sort_by(|a, b| (&a.team, a.offset).cmp(&(&b.team, b.offset)));
        let mut columns = Self::default();
        for event in events {
            columns.team.push(&event.team);
            columns.offset.push(event.offset as i64);
            columns.user_id.push(event.data.user());
            columns.kind.push(event.kind().as_str());
            columns.cost.push(event.cost as i64);
        }
        columns
    }
}

/// The batch's changes, one per key: one statement may not touch a row twice.
#[derive(Default)]
pub(super) struct Changes<'a> {
    pub(super) messages: BTreeMap<(&'a str, u64), (u64, &'a MessageData)>,
    /// The newest edit of each message.
    pub(super) edits: BTreeMap<(&'a str, u64), (u64, &'a EditData)>,
    /// The newest delete offset of each message.
    pub(super) deletes: BTreeMap<(&'a str, u64), u64>,
    /// Each user's highest receipt: seq and its offset.
    pub(super) receipts: BTreeMap<(&'a str, &'a str), (u64, u64)>,
    /// The newest pin or unpin of each message: its offset, whether it pins, its time.
    pub(super) pins: BTreeMap<(&'a str, u64), (u64, bool, i64)>,
    /// Each user's emoji on each message: the newest add or remove, and the oldest add.
    pub(super) reactions: BTreeMap<ReactionKey<'a>, ReactionChange>,
}

/// What a batch does to one user's emoji on one message.
pub(super) struct ReactionChange {
    /// The newest event's offset, and whether it adds.
    pub(super) offset: u64,
    pub(super) add: bool,
    /// The offset of the oldest add in the batch (even one a later remove undid): the
    /// message's emojis are ordered by their first add ever, whatever the batches.
    pub(super) first_add: Option<u64>,
}

/// A user's reaction with one emoji on one message: team, seq, user, emoji.
pub(super) type ReactionKey<'a> = (&'a str, u64, &'a str, &'a str);

impl<'a> Changes<'a> {
    pub(super) fn add(&mut self, event: &'a StreamEvent) {
        let key = (event.team.as_str(), event.seq);
        match &event.data {
            EventData::Message(m) => {
                self.messages.entry(key).or_insert((event.offset, m));
            }
            EventData::Edit(e) => {
                let slot = self.edits.entry(key).or_insert((event.offset, e));
                if event.offset > slot.0 {
                    *slot = (event.offset, e);
                }
            }
            EventData::Delete(_) => {
                let slot = self.deletes.entry(key).or_insert(event.offset);
                *slot = (*slot).max(event.offset);
            }
            EventData::Pin(a) | EventData::Unpin(a) => {
                let pin = matches!(event.data, EventData::Pin(_));
                let slot = self.pins.entry(key).or_insert((event.offset, pin, a.ts));
                if event.offset > slot.0 {
                    *slot = (event.offset, pin, a.ts);
                }
            }
            EventData::React(r) | EventData::Unreact(r) => {
                let add = matches!(event.data, EventData::React(_));
                let key = (key.0, key.1, r.user.as_str(), r.emoji.as_str());
                let change = self.reactions.entry(key).or_insert(ReactionChange {
                    offset: event.offset,
                    add,
                    first_add: None,
                });
                if event.offset >= change.offset {
                    (change.offset, change.add) = (event.offset, add);
                }
                if add {
                    let first = change.first_add.get_or_insert(event.offset);
                    *first = (*first).min(event.offset);
                }
            }
            EventData::Receipt(r) => {
                let slot = self
                    .receipts
                    .entry((event.team.as_str(), r.user.as_str()))
                    .or_insert((event.seq, event.offset));
                if event.seq > slot.0 {
                    *slot = (event.seq, event.offset);
                }
            }
        }
    }
}

/// Each team's offsets in a batch.
pub(super) struct TeamOffsets<'a> {
    pub(super) teams: BTreeMap<&'a str, Run>,
}

pub(super) struct Run {
    pub(super) low: i64,
    pub(super) high: i64,
    /// Whether the offsets are every one from `low` to `high`.
    pub(super) contiguous: bool,
}

impl<'a> TeamOffsets<'a> {
    pub(super) fn new(synced: &[(&'a str, i64)]) -> Self {
        let mut seen: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
        for (team, offset) in synced {
            seen.entry(team).or_default().insert(*offset);
        }
        let teams = seen
            .into_iter()
            .map(|(team, offsets)| {
                let (low, high) = (*offsets.first().unwrap(), *offsets.last().unwrap());
                let contiguous = high - low + 1 == offsets.len() as i64;
                (
                    team,
                    Run {
                        low,
                        high,
                        contiguous,
                    },
                )
            })
            .collect();
        Self { teams }
    }
}
