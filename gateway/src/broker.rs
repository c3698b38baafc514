//! The gateway's narrow interface to Redis: append a durable event, read a team's state,
//! read a range of its stream. Pub/sub lives in `tail`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use teamchat_shared::config::GatewayConfig;
use teamchat_shared::event::{self, Ephemeral, EventKind, MessageData, StreamEvent};
use teamchat_shared::keys::Keys;
use teamchat_shared::protocol::PresenceEntry;
use teamchat_shared::scripts;

/// How long `message:send` dedupe keys live (PROTOCOL.md: within 24 h).
const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;

/// Entries read per XRANGE call.
const RANGE_PAGE: usize = 1_000;

#[derive(Clone)]
pub struct Broker {
    conn: ConnectionManager,
    keys: Keys,
    stream_maxlen: u64,
}

/// A team's state for `room:joined`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamState {
    pub epoch: String,
    pub offset: u64,
    pub seq: u64,
}

/// What the append script returned: the message's identity, new or from the first send.
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
        let client = redis::Client::open(config.redis.redis_url.as_str())?;
        // A slow append that still succeeds must not be reported as "nothing was accepted":
        // allow seconds, not the default 500 ms.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let conn = client
            .get_connection_manager_with_config(manager)
            .await
            .context("connecting to Redis")?;
        Ok(Self {
            conn,
            keys: config.redis.keys(),
            stream_maxlen: config.stream_maxlen,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Appends a new message (dedupe on `client_id`). The ack may be sent once this returns.
    pub async fn append_message(
        &self,
        team: &str,
        src: &str,
        data: &MessageData,
    ) -> redis::RedisResult<Appended> {
        let keys = &self.keys;
        let payload = serde_json::to_string(data).expect("message data encodes as JSON");
        let reply: Vec<String> = scripts::APPEND
            .key(keys.team_meta(team))
            .key(keys.team_events(team))
            .key(keys.ingest(keys.shard_of(team)))
            .key(keys.dedupe(team, &data.user, &data.client_id))
            .arg(team)
            .arg(EventKind::Message.as_str())
            .arg(src)
            .arg(payload)
            .arg(self.stream_maxlen)
            .arg(keys.team_channel(team))
            .arg(DEDUPE_TTL_SECS)
            .arg(scripts::new_epoch())
            .arg(&data.id)
            .arg(data.ts)
            .invoke_async(&mut self.conn.clone())
            .await?;
        parse_appended(&reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "append script reply",
            ))
        })
    }

    /// The team's epoch (created on first use), newest offset and newest message seq.
    pub async fn team_state(&self, team: &str) -> redis::RedisResult<TeamState> {
        let reply: (String, u64, u64) = scripts::TEAM_STATE
            .key(self.keys.team_meta(team))
            .arg(scripts::new_epoch())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(TeamState {
            epoch: reply.0,
            offset: reply.1,
            seq: reply.2,
        })
    }

    /// The offset of the team's newest durable event.
    pub async fn top_offset(&self, team: &str) -> redis::RedisResult<u64> {
        let offset: Option<u64> = self
            .conn
            .clone()
            .hget(self.keys.team_meta(team), "offset")
            .await?;
        Ok(offset.unwrap_or(0))
    }

    /// The team's events with offsets in `from..=to` that the stream still holds, in order.
    pub async fn read_range(
        &self,
        team: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<Vec<StreamEvent>> {
        let key = self.keys.team_events(team);
        let mut events = Vec::new();
        let mut start = from;
        while start <= to {
            let reply: StreamRangeReply = self
                .conn
                .clone()
                .xrange_count(&key, format!("{start}-0"), format!("{to}-0"), RANGE_PAGE)
                .await?;
            let count = reply.ids.len();
            for entry in reply.ids {
                let Some(offset) = event::offset_of_entry_id(&entry.id) else {
                    continue;
                };
                match event::from_fields(Some(team), Some(offset), event::entry_fields(&entry.map))
                {
                    Ok(event) => events.push(event),
                    Err(error) => tracing::error!(%error, team, offset, "undecodable stream entry"),
                }
                start = offset + 1;
            }
            if count < RANGE_PAGE {
                break;
            }
        }
        Ok(events)
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

    /// Marks a session online in a team; returns who is online now, one entry per user
    /// (earliest `since`). Publishes `presence:update` online if it is the user's first.
    pub async fn presence_join(
        &self,
        team: &str,
        session: &str,
        user: &str,
        name: Option<&str>,
        ttl_ms: u64,
    ) -> redis::RedisResult<Vec<PresenceEntry>> {
        let mut call = self.presence_call(team, "join", now_ms(), ttl_ms);
        call.arg(session).arg(user).arg(name.unwrap_or_default());
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
    pub async fn presence_tick(
        &self,
        team: &str,
        sessions: &[Arc<str>],
        ttl_ms: u64,
    ) -> redis::RedisResult<()> {
        let mut call = self.presence_call(team, "tick", now_ms(), ttl_ms);
        for session in sessions {
            call.arg(session.as_ref());
        }
        call.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
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

fn parse_appended(reply: &[String]) -> Option<Appended> {
    let [is_new, seq, offset, epoch, id, ts] = reply else {
        return None;
    };
    Some(Appended {
        is_new: is_new == "1",
        seq: seq.parse().ok()?,
        offset: offset.parse().ok()?,
        epoch: epoch.clone(),
        id: id.clone(),
        ts: ts.parse().ok()?,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
