//! The gateway's narrow interface to Redis, and every Redis call it makes but pub/sub
//! (`hub::tail`) and the append path's (`teamchat_shared::append`, which sends the append
//! script through this broker's group commit, `appender`): read a team's state and a
//! range of its stream, presence, the per-user connection count. Nothing here reads
//! PostgreSQL: a team whose counters are not set is reported as unseeded, and `storage`
//! seeds it. Presence and the
//! per-user connection count, entries that expire unless refreshed, are in `presence`;
//! revocations and removals by the server API in `access`.

mod access;
mod appender;
mod presence;

pub use access::AccessRecords;
pub use presence::ConnectionOpen;

use anyhow::Context;
use redis::AsyncCommands;
use teamchat_shared::config::{GatewayConfig, Timeouts};
use teamchat_shared::event::Ephemeral;
use teamchat_shared::keys::Keys;
use teamchat_shared::redis_conn::Redis;
use teamchat_shared::scripts;
use teamchat_shared::stream;

use crate::protocol::Receipt;

pub use appender::Appender;
pub use teamchat_shared::append::{Append, AppendOutcome, Appended, Appends, Refusal};

/// Where a team's stream stands: its epoch (which changes when the stream was lost and
/// started anew) and the offset of its newest event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Top {
    pub epoch: String,
    pub offset: u64,
}

#[derive(Clone)]
pub struct Broker {
    conn: Redis,
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

impl Broker {
    pub async fn connect(config: &GatewayConfig) -> anyhow::Result<Self> {
        // A slow append that still succeeds must not be reported as "nothing was accepted":
        // allow seconds, not the default 500 ms.
        // While Redis is away, fail requests within a fraction of a second (they answer
        // `unavailable` and the client retries) instead of queueing them on reconnects.
        let timeouts = Timeouts {
            connect: std::time::Duration::from_secs(1),
            response: Some(std::time::Duration::from_secs(5)),
            retries: Some(2),
        };
        let conn = config
            .redis
            .connect(timeouts)
            .await
            .context("connecting to Redis")?;
        let keys = config.redis.keys();
        Ok(Self {
            appender: appender::Appender::start(
                &conn,
                keys.shards(),
                config.append_batch_max as usize,
                (config.redis_wait_replicas > 0).then_some(appender::Replicas {
                    count: config.redis_wait_replicas,
                    timeout_ms: config.redis_wait_timeout_ms,
                }),
            ),
            conn,
            keys,
            stream_maxlen: config.stream_maxlen,
        })
    }

    /// A handle on the shared connection, for a reader that keeps one (the server API's
    /// event export).
    pub fn connection(&self) -> Redis {
        self.conn.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The append path of durable events over this broker's group commit, seeding teams
    /// from `db` (`storage`).
    pub fn appends(&self, db: sqlx::PgPool) -> Appends<Appender> {
        Appends::new(
            self.appender.clone(),
            self.conn.clone(),
            db,
            self.keys.clone(),
            self.stream_maxlen,
        )
    }

    /// The team's epoch (created on first use), newest offset and message seq, receipts;
    /// `None` when the team's counters are not set (`storage` seeds it).
    pub async fn team_state(&self, team: &str) -> redis::RedisResult<Option<TeamState>> {
        let reply: Vec<String> = scripts::TEAM_STATE
            .key(self.keys.team_meta(team))
            .key(self.keys.team_receipts(team))
            .key(self.keys.shard_lineage(self.keys.shard_of(team)))
            .arg(scripts::new_epoch())
            .invoke_async(&mut self.conn.clone())
            .await?;
        if scripts::is_unseeded(&reply) {
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

    /// The offset of the newest entry the team's stream holds (0 for none).
    pub async fn stream_top(&self, team: &str) -> redis::RedisResult<u64> {
        stream::top(&mut self.conn.clone(), &self.keys, team).await
    }

    /// The team's stream epoch and the offset of its newest durable event.
    pub async fn top_offset(&self, team: &str) -> redis::RedisResult<Top> {
        let mut tops = self.top_offsets(&[team.to_owned()]).await?;
        Ok(tops.pop().unwrap_or_default())
    }

    /// The epochs and top offsets of many teams in one round trip on one Redis (an empty
    /// epoch and 0 for a team with none).
    pub async fn top_offsets(&self, teams: &[String]) -> redis::RedisResult<Vec<Top>> {
        let reads = teams.iter().map(|team| {
            let mut read = redis::cmd("HMGET");
            read.arg(self.keys.team_meta(team))
                .arg("epoch")
                .arg("offset");
            read
        });
        let tops: Vec<(Option<String>, Option<u64>)> = self.conn.each(reads.collect()).await?;
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
        redis::cmd(self.conn.publish_command())
            .arg(self.keys.team_channel(team))
            .arg(kind.encode(src, user))
            .query_async(&mut self.conn.clone())
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
