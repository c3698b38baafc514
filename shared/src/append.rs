//! The append path of durable events, one for every writer (a gateway's sessions and
//! server API, the worker's `erase`): the append script's keys and arguments and its
//! answer, and what an answer may ask for before the event can go in — the team's
//! counters seeded from what PostgreSQL holds the first time Redis lacks them (a new team,
//! or one whose Redis state was lost, so no seq or offset is given out twice), or the
//! author of a message older than Redis keeps, read from PostgreSQL.
//!
//! How the script is sent is the writer's: a gateway batches a shard's appends into one
//! call (group commit), the worker sends each on its own (`ScriptSender`).

use std::future::Future;

use redis::{RedisError, RedisResult};
use sqlx::PgPool;

use crate::db::{floor, history, watermark};
use crate::event::EventData;
use crate::keys::Keys;
use crate::redis_conn::Redis;
use crate::scripts;

/// How long `message:send` dedupe keys live (docs/protocol.md: a retry within 24 h).
const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;

/// The most pins a team's seeding restores (the most recent; the pins list shows as many).
const MAX_SEEDED_PINS: i64 = 1_000;

/// `seed_team.lua`'s status for a team seeded again on a promoted replica.
const SEEDED_AFTER_PROMOTION: &str = "2";

/// A durable event to append, with what the script checks before it does.
pub struct Append<'a> {
    pub team: &'a str,
    /// The session that caused it (its own connection does not hear it).
    pub src: &'a str,
    pub data: &'a EventData,
    /// The message an edit or delete concerns, or the seq a receipt reads up to.
    pub target: u64,
    /// Lets a delete remove anyone's message.
    pub staff: bool,
    /// Credits charged to the user.
    pub cost: u64,
    /// With a limit, an event that would take the user's total over it is refused with
    /// `quota_exceeded`.
    pub limit: Option<u64>,
}

/// A message's author and id as PostgreSQL holds them, for an edit or delete of a message
/// older than the messages hash keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authored {
    pub user: String,
    pub id: String,
    /// The message is a thread reply (a reply cannot be a parent).
    pub reply: bool,
    /// For a reaction: the message's standing reactions, `(user, emoji)`, once the script
    /// asked for them (Redis no longer holds them).
    pub reactions: Option<Vec<(String, String)>>,
}

/// The appended event's identity, new or from the first send of a `client_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub is_new: bool,
    pub seq: u64,
    pub offset: u64,
    pub epoch: String,
    pub id: String,
    pub ts: i64,
}

/// Why the script refused an event (the protocol's error code of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Forbidden,
    QuotaExceeded,
    TooLarge,
    BadRequest,
}

/// What the append script did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Appended now (`is_new`), or appended before with the same `client_id`.
    Appended(Appended),
    /// Refused, nothing written.
    Refused(Refusal),
    /// A receipt not above the user's last one: nothing to do.
    Ignored,
    /// A pin of a pinned message, an unpin of one that is not: nothing written; the
    /// message's id.
    Unchanged(String),
    /// The team's counters are not set (a new team, or its Redis state was lost): nothing
    /// was written; seed the team and append again.
    Unseeded,
    /// An edit or delete of a message older than Redis keeps: nothing was written; append
    /// again with its author from PostgreSQL.
    Lookup,
    /// A reaction to such a message whose reactions Redis no longer holds: nothing was
    /// written; append again with them from PostgreSQL too.
    LoadReactions,
}

/// Why an append could not be carried out: the request gets `unavailable`, and nothing
/// was written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] RedisError),
    #[error("PostgreSQL unavailable (seeding a team's counters or reading a message): {0}")]
    Postgres(#[from] sqlx::Error),
}

/// Runs the append script for one event of a shard (its 10 keys and 20 arguments) and
/// answers the script's answer for it.
pub trait ScriptSender: Send + Sync {
    fn send(
        &self,
        shard: u32,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> impl Future<Output = RedisResult<Vec<String>>> + Send;
}

/// One script call per event, on a connection of its own: for writers that append a few
/// events (the worker's `erase`).
impl ScriptSender for Redis {
    async fn send(
        &self,
        _shard: u32,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> RedisResult<Vec<String>> {
        let call = script_call([(keys.as_slice(), args.as_slice())]);
        let answers: Vec<redis::Value> = call.invoke_async(&mut self.clone()).await?;
        match <[redis::Value; 1]>::try_from(answers) {
            Ok([answer]) => script_answer(answer),
            Err(_) => Err(unexpected("one answer per event")),
        }
    }
}

/// One call of the append script for a batch of events, each its keys and arguments.
pub fn script_call<'a>(
    events: impl IntoIterator<Item = (&'a [String], &'a [Vec<u8>])>,
) -> redis::ScriptInvocation<'static> {
    let mut call = scripts::APPEND.prepare_invoke();
    for (keys, args) in events {
        for key in keys {
            call.key(key);
        }
        for arg in args {
            call.arg(arg);
        }
    }
    call
}

/// One event's answer in a batch: an array of strings, or `{'failed', error}` when its
/// stream append failed (nothing of it written).
pub fn script_answer(answer: redis::Value) -> RedisResult<Vec<String>> {
    let answer: Vec<String> = redis::from_redis_value(answer)?;
    match answer.as_slice() {
        [failed, error] if failed == "failed" => Err(RedisError::from((
            redis::ErrorKind::Extension,
            "append failed",
            error.clone(),
        ))),
        _ => Ok(answer),
    }
}

/// Appends durable events through a `ScriptSender`, with the seeding and PostgreSQL
/// lookups the script may ask for.
#[derive(Clone)]
pub struct Appends<S> {
    sender: S,
    /// For the credits read and the seeding.
    conn: Redis,
    /// Where the workers store what was given out: a team's counters start after it.
    db: PgPool,
    keys: Keys,
    /// The messages hash keeps as many messages as the stream keeps events, at most.
    stream_maxlen: u64,
}

impl<S: ScriptSender> Appends<S> {
    pub fn new(sender: S, conn: Redis, db: PgPool, keys: Keys, stream_maxlen: u64) -> Self {
        Self {
            sender,
            conn,
            db,
            keys,
            stream_maxlen,
        }
    }

    /// Appends a durable event; the ack may be sent once this returns `Appended`.
    pub async fn append(&self, append: &Append<'_>) -> Result<AppendOutcome, AppendError> {
        let outcome = match self.send(append, None).await? {
            AppendOutcome::Unseeded => {
                self.seed(append.team).await?;
                match self.send(append, None).await? {
                    // The counters vanished again (eviction, a flush): nothing was written.
                    AppendOutcome::Unseeded => return Err(still_unseeded()),
                    outcome => outcome,
                }
            }
            outcome => outcome,
        };
        match outcome {
            AppendOutcome::Lookup => self.append_authored(append).await,
            outcome => Ok(outcome),
        }
    }

    /// An edit or delete of a message older than Redis keeps (its messages hash holds the
    /// newest `STREAM_MAXLEN`), or a reply to one: authorized (or refused) by what
    /// PostgreSQL stored of it.
    async fn append_authored(&self, append: &Append<'_>) -> Result<AppendOutcome, AppendError> {
        let stored = history::author(&self.db, append.team, append.target)
            .await
            .inspect_err(|e| postgres_failed(append.team, e))?;
        let Some(stored) = stored.filter(|s| !s.deleted) else {
            return Ok(AppendOutcome::Refused(Refusal::NotFound));
        };
        let mut authored = Authored {
            user: stored.user_id,
            id: stored.id,
            reply: stored.parent.is_some(),
            reactions: None,
        };
        let mut outcome = self.send(append, Some(&authored)).await?;
        // A reaction whose message's reactions Redis no longer holds: with them from
        // PostgreSQL (only then: they may be many).
        if outcome == AppendOutcome::LoadReactions {
            let reactions = history::reactions_of(&self.db, append.team, append.target)
                .await
                .inspect_err(|e| postgres_failed(append.team, e))?;
            authored.reactions = Some(reactions);
            outcome = self.send(append, Some(&authored)).await?;
        }
        match outcome {
            // The team's Redis state went away between the calls: nothing was written.
            AppendOutcome::Unseeded | AppendOutcome::Lookup | AppendOutcome::LoadReactions => {
                Err(still_unseeded())
            }
            outcome => Ok(outcome),
        }
    }

    /// One call of the append script. `authored` answers a `Lookup`.
    async fn send(
        &self,
        append: &Append<'_>,
        authored: Option<&Authored>,
    ) -> RedisResult<AppendOutcome> {
        let keys = &self.keys;
        let shard = keys.shard_of(append.team);
        // The script sees only its shard; the user's credits on the others are read first.
        // Concurrent sends on several shards may pass the limit by a few credits.
        let used_elsewhere = match append.limit {
            Some(_) if append.cost > 0 => {
                let per_shard = self.credits_used(append.data.user()).await?;
                per_shard.iter().sum::<u64>() - per_shard[shard as usize]
            }
            _ => 0,
        };
        let (script_keys, args) = script_input(
            keys,
            append,
            authored,
            used_elsewhere,
            self.stream_maxlen,
            self.conn.publish_command(),
        );
        let reply = self.sender.send(shard, script_keys, args).await?;
        parse_outcome(&reply).ok_or_else(|| unexpected("append script reply"))
    }

    /// The credits the user used, per shard (shard 0 first).
    pub async fn credits_used(&self, user: &str) -> RedisResult<Vec<u64>> {
        let reads = (0..self.keys.shards()).map(|shard| {
            let mut read = redis::cmd("HGET");
            read.arg(self.keys.user_credits(shard)).arg(user);
            read
        });
        let per_shard: Vec<Option<u64>> = self.conn.each(reads.collect()).await?;
        Ok(per_shard
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Sets the counters of a team that has none after what PostgreSQL holds and whatever
    /// Redis still has of the team (`scripts/seed_team.lua`: idempotent, a second writer's
    /// seed changes nothing). Once per team while Redis keeps its state.
    pub async fn seed(&self, team: &str) -> Result<(), AppendError> {
        let floor = floor::read(&self.db, team)
            .await
            .inspect_err(|e| postgres_failed(team, e))?;
        let keys = &self.keys;
        let mut conn = self.conn.clone();
        // The team's stream was lost: the offsets between the sync watermark and the floor
        // that were never synced are gone with it. The watermark passes them, so it moves
        // on with the offsets to come, and history stops reading the stream for them.
        if floor.offset > floor.watermark {
            let exists: bool = redis::cmd("EXISTS")
                .arg(keys.team_events(team))
                .query_async(&mut conn)
                .await?;
            if !exists {
                watermark::pass_through(&self.db, team, floor.offset)
                    .await
                    .inspect_err(|e| postgres_failed(team, e))?;
            }
        }
        // What PostgreSQL has pinned, should Redis have lost the team's pins with it. Not
        // worth refusing the team over (a schema not migrated yet, say): without them an
        // unpin of an old pin is acked as a no-op until the message is pinned again.
        let pinned = match history::pinned_seqs(&self.db, team, MAX_SEEDED_PINS).await {
            Ok(pinned) => pinned,
            Err(e) => {
                tracing::warn!(error = %e, team, "pins not restored from PostgreSQL");
                Vec::new()
            }
        };
        // On a promoted replica the script first asks for the messages synced past what
        // the replica holds (their dedupe keys are set again), then seeds with them.
        let mut synced: Option<(i64, Vec<floor::SyncedMessage>)> = None;
        let (status, held) = loop {
            let mut seed = scripts::SEED_TEAM.prepare_invoke();
            seed.key(keys.team_meta(team))
                .key(keys.team_events(team))
                .key(keys.team_messages(team))
                .key(keys.team_pins(team))
                .key(keys.shard_lineage(keys.shard_of(team)));
            let messages = synced
                .as_ref()
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default();
            for m in messages {
                seed.key(keys.dedupe(team, &m.user_id, &m.client_id));
            }
            seed.arg(floor.seq)
                .arg(floor.offset)
                .arg(scripts::new_epoch())
                .arg(
                    synced
                        .as_ref()
                        .map(|(past, _)| past.to_string())
                        .unwrap_or_default(),
                )
                .arg(DEDUPE_TTL_SECS)
                .arg(pinned.len())
                .arg(&pinned);
            for m in messages {
                seed.arg(format!("{} {} {} {}", m.seq, m.offset, m.id, m.ts));
            }
            let (status, held): (String, i64) = seed.invoke_async(&mut conn).await?;
            if status != "synced" || synced.is_some() {
                break (status, held);
            }
            let messages = floor::synced_after(&self.db, team, held)
                .await
                .inspect_err(|e| postgres_failed(team, e))?;
            synced = Some((held, messages));
        };
        // Seeded again on a promoted replica: the offsets PostgreSQL has past what the
        // replica holds were synced from the lost master, and those between them were
        // lost with it. The watermark passes over the lost ones once it gets there.
        if status == SEEDED_AFTER_PROMOTION {
            tracing::warn!(
                team,
                held,
                synced = floor.offset,
                "team seeded again on a promoted replica: new epoch"
            );
            if floor.offset > held {
                watermark::mark_gone(&self.db, team, held + 1, floor.offset)
                    .await
                    .inspect_err(|e| postgres_failed(team, e))?;
            }
        }
        Ok(())
    }
}

/// The append script's keys and arguments for one event (10 and 20, in its order).
fn script_input(
    keys: &Keys,
    append: &Append<'_>,
    authored: Option<&Authored>,
    used_elsewhere: u64,
    stream_maxlen: u64,
    publish_command: &str,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let Append {
        team,
        src,
        data,
        target,
        staff,
        cost,
        limit,
    } = *append;
    let shard = keys.shard_of(team);
    // The fourth key is the dedupe key of a message, the tombstone of an edit's or a
    // delete's target.
    let (id, dedupe) = match data {
        EventData::Message(m) => (m.id.as_str(), keys.dedupe(team, &m.user, &m.client_id)),
        EventData::Edit(_) | EventData::Delete(_) => ("", keys.tombstone(team, target)),
        EventData::Pin(_) | EventData::Unpin(_) => ("", keys.team_pins(team)),
        _ => ("", keys.team_meta(team)),
    };
    let emoji = match data {
        EventData::React(r) | EventData::Unreact(r) => r.emoji.as_str(),
        _ => "",
    };
    let (authored, reactions) = authored
        .map(|a| {
            let entry = match a.reply {
                true => format!("{}\t{}\tr", a.user, a.id),
                false => format!("{}\t{}", a.user, a.id),
            };
            let reactions = match &a.reactions {
                Some(reactions) => {
                    let lines: Vec<String> = reactions
                        .iter()
                        .map(|(user, emoji)| format!("{user}\t{emoji}"))
                        .collect();
                    lines.join("\n")
                }
                None => "-".to_owned(),
            };
            (entry, reactions)
        })
        .unwrap_or_else(|| (String::new(), "-".to_owned()));
    let script_keys = vec![
        keys.team_meta(team),
        keys.team_events(team),
        keys.ingest(shard),
        dedupe,
        keys.team_messages(team),
        keys.team_receipts(team),
        keys.user_credits(shard),
        keys.tombstone(team, target),
        keys.message_reactions(team, target),
        keys.shard_lineage(shard),
    ];
    let args = vec![
        arg(team),
        arg(data.kind().as_str()),
        arg(src),
        data.encode().into_bytes(),
        keys.team_channel(team).into_bytes(),
        arg(DEDUPE_TTL_SECS),
        scripts::new_epoch().into_bytes(),
        arg(id),
        arg(data.ts()),
        arg(target),
        arg(data.user()),
        arg(if staff { "1" } else { "0" }),
        arg(cost),
        limit.map(arg).unwrap_or_default(),
        arg(used_elsewhere),
        arg(stream_maxlen),
        authored.into_bytes(),
        arg(emoji),
        reactions.into_bytes(),
        arg(publish_command),
    ];
    (script_keys, args)
}

fn parse_outcome(reply: &[String]) -> Option<AppendOutcome> {
    match reply {
        _ if scripts::is_unseeded(reply) => Some(AppendOutcome::Unseeded),
        [ignored] if ignored == "ignored" => Some(AppendOutcome::Ignored),
        [lookup] if lookup == "lookup" => Some(AppendOutcome::Lookup),
        [load] if load == "reactions" => Some(AppendOutcome::LoadReactions),
        [unchanged, id] if unchanged == "unchanged" => Some(AppendOutcome::Unchanged(id.clone())),
        [err, code] if err == "err" => Some(AppendOutcome::Refused(match code.as_str() {
            "not_found" => Refusal::NotFound,
            "forbidden" => Refusal::Forbidden,
            "quota_exceeded" => Refusal::QuotaExceeded,
            "too_large" => Refusal::TooLarge,
            _ => Refusal::BadRequest,
        })),
        [is_new, seq, offset, epoch, id, ts] => Some(AppendOutcome::Appended(Appended {
            is_new: is_new == "1",
            seq: seq.parse().ok()?,
            offset: offset.parse().ok()?,
            epoch: epoch.clone(),
            id: id.clone(),
            ts: ts.parse().ok()?,
        })),
        _ => None,
    }
}

/// A script argument.
fn arg(value: impl ToString) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

fn postgres_failed(team: &str, e: &sqlx::Error) {
    tracing::warn!(error = %e, team, "PostgreSQL unavailable");
}

/// A team's counters still missing right after it was seeded.
fn still_unseeded() -> AppendError {
    AppendError::Redis(unexpected("team's counters missing right after seeding"))
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;
    use crate::event::{ActorData, EditData, EventData, MessageData, ReactionData};

    /// On a Redis Cluster a script may only touch keys of one slot, and `SPUBLISH` from a
    /// script only a channel of that slot: every event kind's keys and channel, for teams
    /// on every shard, share their shard's slot.
    #[test]
    fn every_append_touches_one_cluster_slot() {
        let keys = Keys::new("tc", 128);
        let actor = ActorData {
            user: "u:1".into(),
            ts: 1,
        };
        let kinds = [
            EventData::Delete(actor.clone()),
            EventData::Message(MessageData {
                id: "id".into(),
                client_id: "c:1".into(),
                user: "u:1".into(),
                name: None,
                body: "b".into(),
                meta: None,
                ts: 1,
                parent: None,
                mentions: Vec::new(),
                attachments: Vec::new(),
            }),
            EventData::Edit(EditData {
                user: "u:1".into(),
                body: "b".into(),
                ts: 1,
            }),
            EventData::React(ReactionData {
                user: "u:1".into(),
                emoji: "👍".into(),
                ts: 1,
            }),
        ];
        for n in 0..500 {
            let team = format!("team-{n}");
            for data in &kinds {
                let append = Append {
                    team: &team,
                    src: "s",
                    data,
                    target: n,
                    staff: false,
                    cost: 1,
                    limit: Some(10),
                };
                let (script_keys, args) = script_input(&keys, &append, None, 0, 10, "SPUBLISH");
                let slot = Slot::for_key(&script_keys[0]);
                let channel = String::from_utf8(args[4].clone()).unwrap();
                for key in script_keys.iter().chain([&channel]) {
                    assert_eq!(Slot::for_key(key), slot, "{key} of team {team}");
                }
            }
            let presence = keys.presence(&team);
            for key in presence.iter().chain([&keys.team_pins(&team)]) {
                assert_eq!(Slot::for_key(key), Slot::for_key(keys.team_meta(&team)));
            }
            let user = format!("user:{n}");
            assert_eq!(
                Slot::for_key(keys.user_connections(&user)),
                Slot::for_key(keys.user_revoked(&user))
            );
        }
    }
}
