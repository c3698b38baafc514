//! Entries that expire unless refreshed: presence per team (`scripts/presence.lua`) and
//! each user's connections across gateways (`scripts/connection_limit.lua`).

use std::collections::BTreeMap;
use std::sync::Arc;

use teamchat_shared::runtime::now_ms;
use teamchat_shared::scripts;

use super::Broker;
use crate::protocol::PresenceEntry;

/// Whether a connection was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionOpen {
    Opened,
    /// The user holds `MAX_CONNECTIONS_PER_USER` connections already (4029).
    OverLimit,
    /// The token was issued before the user's tokens were revoked (4001).
    Revoked,
}

impl Broker {
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
            .arg(self.keys.team_channel(team))
            .arg(self.conn.publish_command());
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

    /// Who is online in a team now, one entry per user (a join of no one).
    pub async fn presence(&self, team: &str) -> redis::RedisResult<Vec<PresenceEntry>> {
        self.presence_join(team, &[], 0).await
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
        call.key(self.keys.user_connections(user))
            .key(self.keys.user_revoked(user));
        call.arg(op).arg(session).arg(now).arg(now + ttl_ms as i64);
        call
    }

    /// Counts a new connection of the user across gateways, unless it would pass `limit`
    /// or its token (issued at `issued_ms`) was revoked.
    pub async fn connection_open(
        &self,
        user: &str,
        session: &str,
        limit: u32,
        ttl_ms: u64,
        issued_ms: u64,
    ) -> redis::RedisResult<ConnectionOpen> {
        let mut call = self.connection_call(user, "open", session, ttl_ms);
        call.arg(limit).arg(issued_ms);
        Ok(
            match call.invoke_async::<i64>(&mut self.conn.clone()).await? {
                1 => ConnectionOpen::Opened,
                -1 => ConnectionOpen::Revoked,
                _ => ConnectionOpen::OverLimit,
            },
        )
    }

    pub async fn connection_close(&self, user: &str, session: &str) -> redis::RedisResult<()> {
        let call = self.connection_call(user, "close", session, 0);
        call.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Keeps this gateway's connections counted (one pipeline for all of them on one
    /// Redis).
    pub async fn connections_refresh(
        &self,
        connections: &[(Arc<str>, Arc<str>)],
        ttl_ms: u64,
    ) -> redis::RedisResult<()> {
        let expires = now_ms() + ttl_ms as i64;
        let mut commands = Vec::with_capacity(connections.len() * 2);
        for (user, session) in connections {
            let key = self.keys.user_connections(user);
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&key).arg("XX").arg(expires).arg(session.as_ref());
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(&key).arg(expires);
            commands.extend([zadd, expire]);
        }
        self.conn.each::<redis::Value>(commands).await.map(|_| ())
    }
}
