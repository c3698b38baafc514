//! The gateway's narrow interface to Redis, and every Redis call it makes but pub/sub
//! (`hub::tail`): append a durable event, read a team's state and a range of its stream,
//! presence, the per-user connection count. Nothing here reads PostgreSQL: a team whose
//! counters are not set is reported as unseeded, and `storage` seeds it. Presence and the
//! per-user connection count, entries that expire unless refreshed, are in `presence`;
//! revocations and removals by the server API in `access`.

mod access;
mod appender;
mod presence;

pub use access::AccessRecords;
pub use presence::ConnectionOpen;

use anyhow::Context;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use teamchat_shared::config::GatewayConfig;
use teamchat_shared::event::{Ephemeral, EventData};
use teamchat_shared::keys::Keys;
use teamchat_shared::scripts;
use teamchat_shared::stream;

use crate::protocol::{ErrorCode, Receipt};

/// How long `message:send` dedupe keys live (docs/protocol.md: a retry within 24 h).
const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;

/// Where a team's stream stands: its epoch (which changes when the stream was lost and
/// started anew) and the offset of its newest event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Top {
    pub epoch: String,
    pub offset: u64,
}

#[derive(Clone)]
pub struct Broker {
    conn: ConnectionManager,
    /// Durable events go through it, batched per shard.
    appender: appender::Appender,
    keys: Keys,
    stream_maxlen: u64,
}

/// A team's state for `room:joined`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamState {
    pub epoch: String,
    pub offset: u64,
    pub seq: u64,
    pub receipts: Vec<Receipt>,
}

/// What the append script did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Appended now (`is_new`), or appended before with the same `client_id`.
    Appended(Appended),
    /// Refused, nothing written: `not_found`, `forbidden` or `bad_request`.
    Refused(ErrorCode),
    /// A receipt not above the user's last one: nothing to do.
    Ignored,
    /// A pin of a pinned message, an unpin of one that is not: nothing written; the
    /// message's id.
    Unchanged(String),
    /// The team's counters are not set (a new team, or its Redis state was lost): nothing
    /// was written; seed the team and append again (`storage`).
    Unseeded,
    /// An edit or delete of a message older than Redis keeps: nothing was written; append
    /// again with its author from PostgreSQL (`storage`).
    Lookup,
    /// A reaction to such a message whose reactions Redis no longer holds: nothing was
    /// written; append again with them from PostgreSQL too (`storage`).
    LoadReactions,
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

impl Broker {
    pub async fn connect(config: &GatewayConfig) -> anyhow::Result<Self> {
        let client = config.redis.client()?;
        // A slow append that still succeeds must not be reported as "nothing was accepted":
        // allow seconds, not the default 500 ms.
        // While Redis is away, fail requests within a fraction of a second (they answer
        // `unavailable` and the client retries) instead of queueing them on reconnects.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(5)))
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(50))
            .set_max_delay(std::time::Duration::from_millis(500));
        let conn = client
            .get_connection_manager_with_config(manager)
            .await
            .context("connecting to Redis")?;
        let keys = config.redis.keys();
        Ok(Self {
            appender: appender::Appender::start(
                &conn,
                keys.shards(),
                config.append_batch_max as usize,
            ),
            conn,
            keys,
            stream_maxlen: config.stream_maxlen,
        })
    }

    /// A handle on the shared connection, for a reader that keeps one (the server API's
    /// event export).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Appends a durable event (the acked requests and receipts). The ack may be sent
    /// once this returns `Appended`. `authored` answers a `Lookup`.
    pub async fn append(
        &self,
        append: &Append<'_>,
        authored: Option<&Authored>,
    ) -> redis::RedisResult<AppendOutcome> {
        let Append {
            team,
            src,
            data,
            target,
            staff,
            cost,
            limit,
        } = *append;
        let keys = &self.keys;
        let shard = keys.shard_of(team);
        // The script sees only its shard; the user's credits on the others are read first.
        // Concurrent sends on several shards may pass the limit by a few credits.
        let used_elsewhere = match limit {
            Some(_) if cost > 0 => {
                let per_shard = self.credits_used(data.user()).await?;
                per_shard.iter().sum::<u64>() - per_shard[shard as usize]
            }
            _ => 0,
        };
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
        let keys = &self.keys;
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
            // The hash keeps as many messages as the stream keeps events, at most.
            arg(self.stream_maxlen),
            authored.into_bytes(),
            arg(emoji),
            reactions.into_bytes(),
        ];
        let reply = self.appender.append(shard, script_keys, args).await?;
        parse_outcome(&reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "append script reply",
            ))
        })
    }

    /// The credits the user used, per shard (shard 0 first).
    pub async fn credits_used(&self, user: &str) -> redis::RedisResult<Vec<u64>> {
        let mut pipe = redis::pipe();
        for shard in 0..self.keys.shards() {
            pipe.hget(self.keys.user_credits(shard), user);
        }
        let per_shard: Vec<Option<u64>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(per_shard
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// The team's epoch (created on first use), newest offset and message seq, receipts;
    /// `None` when the team's counters are not set (`storage` seeds it).
    pub async fn team_state(&self, team: &str) -> redis::RedisResult<Option<TeamState>> {
        let reply: Vec<String> = scripts::TEAM_STATE
            .key(self.keys.team_meta(team))
            .key(self.keys.team_receipts(team))
            .arg(scripts::new_epoch())
            .invoke_async(&mut self.conn.clone())
            .await?;
        if is_unseeded(&reply) {
            return Ok(None);
        }
        let bad = || {
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "team state reply"))
        };
        let [epoch, offset, seq, receipts @ ..] = reply.as_slice() else {
            return Err(bad());
        };
        Ok(Some(TeamState {
            epoch: epoch.clone(),
            offset: offset.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
            receipts: receipts
                .chunks_exact(2)
                .filter_map(|pair| {
                    Some(Receipt {
                        user: pair[0].clone(),
                        seq: pair[1].parse().ok()?,
                    })
                })
                .collect(),
        }))
    }

    /// Sets the counters of a team that has none (new, or its Redis state lost) after
    /// `seq` and `offset` (what PostgreSQL holds) and whatever Redis still has of the team
    /// (`scripts/seed_team.lua`: idempotent, a second gateway's seed changes nothing).
    pub async fn seed_team(
        &self,
        team: &str,
        seq: i64,
        offset: i64,
        pinned: &[i64],
    ) -> redis::RedisResult<()> {
        let keys = &self.keys;
        let _: i64 = scripts::SEED_TEAM
            .key(keys.team_meta(team))
            .key(keys.team_events(team))
            .key(keys.team_messages(team))
            .key(keys.team_pins(team))
            .arg(seq)
            .arg(offset)
            .arg(scripts::new_epoch())
            .arg(pinned)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The offset of the newest entry the team's stream holds (0 for none).
    pub async fn stream_top(&self, team: &str) -> redis::RedisResult<u64> {
        let reply: redis::streams::StreamRangeReply = self
            .conn
            .clone()
            .xrevrange_count(self.keys.team_events(team), "+", "-", 1)
            .await?;
        Ok(reply
            .ids
            .first()
            .and_then(|entry| teamchat_shared::event::offset_of_entry_id(&entry.id))
            .unwrap_or(0))
    }

    /// Whether the team's stream exists.
    pub async fn stream_exists(&self, team: &str) -> redis::RedisResult<bool> {
        self.conn.clone().exists(self.keys.team_events(team)).await
    }

    /// The team's stream epoch and the offset of its newest durable event.
    pub async fn top_offset(&self, team: &str) -> redis::RedisResult<Top> {
        let mut tops = self.top_offsets(&[team.to_owned()]).await?;
        Ok(tops.pop().unwrap_or_default())
    }

    /// The epochs and top offsets of many teams in one round trip (an empty epoch and 0
    /// for a team with none).
    pub async fn top_offsets(&self, teams: &[String]) -> redis::RedisResult<Vec<Top>> {
        let mut pipe = redis::pipe();
        for team in teams {
            pipe.cmd("HMGET")
                .arg(self.keys.team_meta(team))
                .arg("epoch")
                .arg("offset");
        }
        let tops: Vec<(Option<String>, Option<u64>)> =
            pipe.query_async(&mut self.conn.clone()).await?;
        Ok(tops
            .into_iter()
            .map(|(epoch, offset)| Top {
                epoch: epoch.unwrap_or_default(),
                offset: offset.unwrap_or_default(),
            })
            .collect())
    }

    /// The team's entries with offsets in `from..=to` that the stream still holds, at most
    /// `stream::PAGE` of them, in order (those that cannot be decoded by offset only).
    pub async fn read_page(
        &self,
        team: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<stream::Range> {
        let mut conn = self.conn.clone();
        stream::read_page(&mut conn, &self.keys, team, from, to, stream::PAGE).await
    }

    /// The team's entries with offsets in `from..=to` that the stream still holds, in order
    /// (those that cannot be decoded by offset only). Callers bound the range.
    pub async fn read_range(
        &self,
        team: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<stream::Range> {
        stream::read_range(&mut self.conn.clone(), &self.keys, team, from, to).await
    }

    /// Publishes an ephemeral event on the team's channel (nothing is stored).
    pub async fn publish_ephemeral(
        &self,
        team: &str,
        kind: Ephemeral,
        src: &str,
        user: &str,
    ) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .publish(self.keys.team_channel(team), kind.encode(src, user))
            .await
    }

    /// Publishes what the server API asks of a user's connections (JSON) on the control
    /// channel, to every gateway.
    pub async fn publish_control(&self, control: &str) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .publish(self.keys.control(), control)
            .await
    }

    /// Redis answers PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }
}

fn parse_outcome(reply: &[String]) -> Option<AppendOutcome> {
    match reply {
        _ if is_unseeded(reply) => Some(AppendOutcome::Unseeded),
        [ignored] if ignored == "ignored" => Some(AppendOutcome::Ignored),
        [lookup] if lookup == "lookup" => Some(AppendOutcome::Lookup),
        [load] if load == "reactions" => Some(AppendOutcome::LoadReactions),
        [unchanged, id] if unchanged == "unchanged" => Some(AppendOutcome::Unchanged(id.clone())),
        [err, code] if err == "err" => Some(AppendOutcome::Refused(match code.as_str() {
            "not_found" => ErrorCode::NotFound,
            "forbidden" => ErrorCode::Forbidden,
            "quota_exceeded" => ErrorCode::QuotaExceeded,
            "too_large" => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
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

/// A script's answer for a team whose counters are not set yet.
fn is_unseeded(reply: &[String]) -> bool {
    matches!(reply, [only] if only == "unseeded")
}
