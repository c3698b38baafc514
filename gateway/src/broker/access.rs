//! Revocations and removals by the server API, kept in Redis as "tokens issued before
//! this time (ms) no longer grant it" (`scripts/access_record.lua`), so a gateway that
//! missed the control message still refuses such a token at its next connect (the
//! connection-limit script), `room:join`, `token:refresh` or history request.

use teamchat_shared::scripts;

use super::Broker;

/// The records that bear on a user's token in a team: before when (ms) the user's tokens
/// were revoked, and before when they were removed from the team (0: never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessRecords {
    pub revoked_before: u64,
    pub removed_before: u64,
}

impl AccessRecords {
    pub fn revoked(&self, issued_ms: u64) -> bool {
        issued_ms < self.revoked_before
    }

    pub fn removed(&self, issued_ms: u64) -> bool {
        issued_ms < self.removed_before
    }
}

impl Broker {
    /// Revokes the user's tokens issued before `before_ms`; returns the time kept (a
    /// later revocation never moves it back).
    pub async fn record_revocation(
        &self,
        user: &str,
        before_ms: u64,
        keep_ms: u64,
    ) -> redis::RedisResult<u64> {
        self.record(self.keys.user_revoked(user), before_ms, keep_ms)
            .await
    }

    /// Removes the user from the team for tokens issued before `before_ms`.
    pub async fn record_removal(
        &self,
        team: &str,
        user: &str,
        before_ms: u64,
        keep_ms: u64,
    ) -> redis::RedisResult<u64> {
        self.record(self.keys.team_removed(team, user), before_ms, keep_ms)
            .await
    }

    async fn record(&self, key: String, before_ms: u64, keep_ms: u64) -> redis::RedisResult<u64> {
        let mut call = scripts::ACCESS_RECORD.prepare_invoke();
        call.key(key).arg(before_ms).arg(keep_ms.max(1));
        call.invoke_async(&mut self.conn.clone()).await
    }

    /// The revocation records of many users (0: none), in one round trip.
    pub async fn revocations(&self, users: &[std::sync::Arc<str>]) -> redis::RedisResult<Vec<u64>> {
        let gets = users.iter().map(|user| get(self.keys.user_revoked(user)));
        let found: Vec<Option<u64>> = self.conn.each(gets.collect()).await?;
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The user's revocation record, and their removal record in `team` if one is given.
    /// The user's revocation and removal from each of `teams`, in one round trip: each
    /// team's records, in order.
    pub async fn access_records_of_teams(
        &self,
        user: &str,
        teams: &[String],
    ) -> redis::RedisResult<Vec<AccessRecords>> {
        let mut gets = vec![get(self.keys.user_revoked(user))];
        gets.extend(
            teams
                .iter()
                .map(|team| get(self.keys.team_removed(team, user))),
        );
        let found: Vec<Option<u64>> = self.conn.each(gets).await?;
        let revoked_before = found.first().copied().flatten().unwrap_or(0);
        Ok(found
            .iter()
            .skip(1)
            .map(|removed| AccessRecords {
                revoked_before,
                removed_before: removed.unwrap_or(0),
            })
            .collect())
    }

    pub async fn access_records(
        &self,
        user: &str,
        team: Option<&str>,
    ) -> redis::RedisResult<AccessRecords> {
        let mut gets = vec![get(self.keys.user_revoked(user))];
        gets.extend(team.map(|team| get(self.keys.team_removed(team, user))));
        let found: Vec<Option<u64>> = self.conn.each(gets).await?;
        Ok(AccessRecords {
            revoked_before: found.first().copied().flatten().unwrap_or(0),
            removed_before: found.get(1).copied().flatten().unwrap_or(0),
        })
    }
}

fn get(key: String) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    cmd
}
