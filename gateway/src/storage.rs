//! Where durable events go and where a team's state comes from: Redis (`broker`), through
//! the shared append path (`teamchat_shared::append`), which seeds a team's counters from
//! what PostgreSQL holds the first time Redis lacks them (a new team, or one whose Redis
//! state was lost), so no seq or offset is given out twice.

use sqlx::PgPool;
use teamchat_shared::append::Appends;

use crate::broker::{Append, AppendOutcome, Appender, Broker, TeamState};

/// Why storage could not answer: the request gets `unavailable`, and nothing was written.
pub use teamchat_shared::append::AppendError as StorageError;

/// Appends and team state, with the seeding they may need first.
#[derive(Clone)]
pub struct Storage {
    broker: Broker,
    appends: Appends<Appender>,
}

impl Storage {
    pub fn new(broker: Broker, db: PgPool) -> Self {
        let appends = broker.appends(db);
        Self { broker, appends }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The append path, for callers that append through it themselves (an erasure).
    pub fn appends(&self) -> &Appends<Appender> {
        &self.appends
    }

    /// Appends a durable event; the ack may be sent once this returns `Appended`.
    pub async fn append(&self, append: &Append<'_>) -> Result<AppendOutcome, StorageError> {
        self.appends.append(append).await
    }

    /// The credits the user used, per shard (shard 0 first).
    pub async fn credits_used(&self, user: &str) -> redis::RedisResult<Vec<u64>> {
        self.appends.credits_used(user).await
    }

    /// The team's epoch, newest offset and seq, and receipts.
    pub async fn team_state(&self, team: &str) -> Result<TeamState, StorageError> {
        if let Some(state) = self.broker.team_state(team).await? {
            return Ok(state);
        }
        self.appends.seed(team).await?;
        self.broker.team_state(team).await?.ok_or_else(|| {
            StorageError::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "team's counters missing right after seeding",
            )))
        })
    }
}
