//! The gateway's narrow interface to Redis: append a durable event, read a team's state,
//! read a range of its stream. Pub/sub lives in `tail`. PostgreSQL is asked only when a
//! team's counters are set (a new team, or one whose Redis state was lost).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use teamchat_shared::config::GatewayConfig;
use teamchat_shared::event::{Ephemeral, EventData, StreamEvent};
use teamchat_shared::keys::Keys;
use teamchat_shared::protocol::{ErrorCode, PresenceEntry, Receipt};
use teamchat_shared::scripts;
use teamchat_shared::stream;

use crate::floor;

/// How long `message:send` dedupe keys live (PROTOCOL.md: within 24 h).
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
    keys: Keys,
    stream_maxlen: u64,
    /// Where the worker stores what was given out: a team's counters start after it.
    db: PgPool,
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
    pub async fn connect(config: &GatewayConfig, db: PgPool) -> anyhow::Result<Self> {
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
        Ok(Self {
            conn,
            keys: config.redis.keys(),
            stream_maxlen: config.stream_maxlen,
            db,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Appends a durable event (PROTOCOL.md's acked requests and receipts). The ack may be
    /// sent once this returns `Appended`.
    ///
    /// `target` is the message an edit or delete concerns, or the seq a receipt reads up
    /// to; `staff` lets a delete remove anyone's message.
    /// `cost` credits are charged to the user; with a `limit`, an event that would take the
    /// user's total over it is refused with `quota_exceeded`.
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        team: &str,
        src: &str,
        data: &EventData,
        target: u64,
        staff: bool,
        cost: u64,
        limit: Option<u64>,
    ) -> redis::RedisResult<AppendOutcome> {
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
        let (id, dedupe) = match data {
            EventData::Message(m) => (m.id.as_str(), keys.dedupe(team, &m.user, &m.client_id)),
            _ => ("", keys.team_meta(team)),
        };
        let mut append = scripts::APPEND.prepare_invoke();
        append
            .key(keys.team_meta(team))
            .key(keys.team_events(team))
            .key(keys.ingest(keys.shard_of(team)))
            .key(dedupe)
            .key(keys.team_messages(team))
            .key(keys.team_receipts(team))
            .key(keys.user_credits(shard))
            .key(keys.team_credits(shard))
            .arg(team)
            .arg(data.kind().as_str())
            .arg(src)
            .arg(data.encode())
            .arg(self.stream_maxlen)
            .arg(keys.team_channel(team))
            .arg(DEDUPE_TTL_SECS)
            .arg(scripts::new_epoch())
            .arg(id)
            .arg(data.ts())
            .arg(target)
            .arg(data.user())
            .arg(if staff { "1" } else { "0" })
            .arg(cost)
            .arg(limit.map(|l| l.to_string()).unwrap_or_default())
            .arg(used_elsewhere);
        let mut reply: Vec<String> = append.invoke_async(&mut self.conn.clone()).await?;
        if is_unseeded(&reply) {
            self.seed(team).await?;
            reply = append.invoke_async(&mut self.conn.clone()).await?;
        }
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

    /// The team's epoch (created on first use), newest offset and message seq, receipts.
    pub async fn team_state(&self, team: &str) -> redis::RedisResult<TeamState> {
        let mut read = scripts::TEAM_STATE.prepare_invoke();
        read.key(self.keys.team_meta(team))
            .key(self.keys.team_receipts(team))
            .arg(scripts::new_epoch());
        let mut reply: Vec<String> = read.invoke_async(&mut self.conn.clone()).await?;
        if is_unseeded(&reply) {
            self.seed(team).await?;
            reply = read.invoke_async(&mut self.conn.clone()).await?;
        }
        let bad = || {
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "team state reply"))
        };
        let [epoch, offset, seq, receipts @ ..] = reply.as_slice() else {
            return Err(bad());
        };
        Ok(TeamState {
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
        })
    }

    /// Sets the counters of a team that has none (new, or its Redis state lost) after
    /// what was given out before: what PostgreSQL holds (`floor`) and what Redis still has
    /// (`scripts/seed_team.lua`). Once per team while Redis keeps its state.
    async fn seed(&self, team: &str) -> redis::RedisResult<()> {
        let keys = &self.keys;
        let floor = floor::read(&self.db, team).await.map_err(postgres_error)?;
        if floor.offset > floor.watermark {
            let stream_kept: bool = self.conn.clone().exists(keys.team_events(team)).await?;
            if !stream_kept {
                floor::pass_lost_offsets(&self.db, team, floor.offset)
                    .await
                    .map_err(postgres_error)?;
            }
        }
        let _: i64 = scripts::SEED_TEAM
            .key(keys.team_meta(team))
            .key(keys.team_events(team))
            .key(keys.team_messages(team))
            .arg(floor.seq)
            .arg(floor.offset)
            .arg(scripts::new_epoch())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
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

    /// The team's events with offsets in `from..=to` that the stream still holds, in order.
    pub async fn read_range(
        &self,
        team: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<Vec<StreamEvent>> {
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

    fn presence_call(
        &self,
        team: &str,
        op: &str,
        now: i64,
        ttl_ms: u64,
    ) -> redis::ScriptInvocation<'static> {
        let [sessions, expiry, users] = self.keys.presence(team);
        let mut call = scripts::PRESENCE.prepare_invoke();
        call.key(sessions).key(expiry).key(users);
        call.arg(op)
            .arg(now)
            .arg(now + ttl_ms as i64)
            .arg(self.keys.team_channel(team));
        call
    }

    /// Marks sessions (`session`, `user`, `name`) online in a team, a batch of joins in one
    /// call; returns who is online now, one entry per user (earliest `since`). Publishes
    /// `presence:update` online for each user whose first session it is.
    pub async fn presence_join(
        &self,
        team: &str,
        joining: &[(&str, &str, Option<&str>)],
        ttl_ms: u64,
    ) -> redis::RedisResult<Vec<PresenceEntry>> {
        let mut call = self.presence_call(team, "join", now_ms(), ttl_ms);
        for (session, user, name) in joining {
            call.arg(session).arg(user).arg(name.unwrap_or_default());
        }
        let entries: Vec<String> = call.invoke_async(&mut self.conn.clone()).await?;
        let mut users: BTreeMap<String, PresenceEntry> = BTreeMap::new();
        for entry in entries {
            let mut parts = entry.splitn(3, '\n');
            let (Some(user), Some(name), Some(since)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let since: i64 = since.parse().unwrap_or_default();
            let slot = users
                .entry(user.to_owned())
                .or_insert_with(|| PresenceEntry {
                    user: user.to_owned(),
                    name: (!name.is_empty()).then(|| name.to_owned()),
                    since,
                });
            slot.since = slot.since.min(since);
        }
        Ok(users.into_values().collect())
    }

    /// Marks a session offline in a team (`presence:update` offline if it was the last).
    pub async fn presence_leave(&self, team: &str, session: &str) -> redis::RedisResult<()> {
        let mut call = self.presence_call(team, "leave", now_ms(), 0);
        call.arg(session);
        call.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Keeps this gateway's sessions of a team online and expires the ones nobody refreshed.
    /// Returns the given sessions the team no longer had (they expired meanwhile).
    pub async fn presence_tick(
        &self,
        team: &str,
        sessions: &[Arc<str>],
        ttl_ms: u64,
    ) -> redis::RedisResult<Vec<String>> {
        let mut call = self.presence_call(team, "tick", now_ms(), ttl_ms);
        for session in sessions {
            call.arg(session.as_ref());
        }
        call.invoke_async(&mut self.conn.clone()).await
    }

    fn connection_call(
        &self,
        user: &str,
        op: &str,
        session: &str,
        ttl_ms: u64,
    ) -> redis::ScriptInvocation<'static> {
        let now = now_ms();
        let mut call = scripts::CONNECTION_LIMIT.prepare_invoke();
        call.key(self.keys.user_connections(user));
        call.arg(op).arg(session).arg(now).arg(now + ttl_ms as i64);
        call
    }

    /// Counts a new connection of the user across gateways; false if over `limit`.
    pub async fn connection_open(
        &self,
        user: &str,
        session: &str,
        limit: u32,
        ttl_ms: u64,
    ) -> redis::RedisResult<bool> {
        let mut call = self.connection_call(user, "open", session, ttl_ms);
        call.arg(limit);
        Ok(call.invoke_async::<i64>(&mut self.conn.clone()).await? == 1)
    }

    pub async fn connection_close(&self, user: &str, session: &str) -> redis::RedisResult<()> {
        let call = self.connection_call(user, "close", session, 0);
        call.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Keeps this gateway's connections counted (one pipeline for all of them).
    pub async fn connections_refresh(
        &self,
        connections: &[(Arc<str>, Arc<str>)],
        ttl_ms: u64,
    ) -> redis::RedisResult<()> {
        let expires = now_ms() + ttl_ms as i64;
        let mut pipe = redis::pipe();
        for (user, session) in connections {
            let key = self.keys.user_connections(user);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg(expires)
                .arg(session.as_ref())
                .ignore();
            pipe.cmd("PEXPIREAT").arg(&key).arg(expires).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await
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
        [ignored] if ignored == "ignored" => Some(AppendOutcome::Ignored),
        [err, code] if err == "err" => Some(AppendOutcome::Refused(match code.as_str() {
            "not_found" => ErrorCode::NotFound,
            "forbidden" => ErrorCode::Forbidden,
            "quota_exceeded" => ErrorCode::QuotaExceeded,
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

/// A script's answer for a team whose counters are not set yet.
fn is_unseeded(reply: &[String]) -> bool {
    matches!(reply, [only] if only == "unseeded")
}

/// A PostgreSQL failure while seeding a team, as the broker's error: the request gets
/// `unavailable`, and nothing was written.
fn postgres_error(e: sqlx::Error) -> redis::RedisError {
    tracing::warn!(error = %e, "seeding a team's counters: PostgreSQL unavailable");
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "PostgreSQL unavailable while seeding the team's counters",
        e.to_string(),
    ))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
