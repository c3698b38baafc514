//! Where durable events go and where a team's state comes from: Redis (`broker`), with a
//! team's counters seeded from what PostgreSQL holds the first time Redis lacks them (a new
//! team, or one whose Redis state was lost), so no seq or offset is given out twice.

use sqlx::PgPool;
use teamchat_shared::db::{floor, history, watermark};

use crate::broker::{Append, AppendOutcome, Authored, Broker, TeamState};
use crate::protocol::ErrorCode;

/// Appends and team state, with the seeding they may need first.
#[derive(Clone)]
pub struct Storage {
    broker: Broker,
    /// Where the workers store what was given out: a team's counters start after it.
    db: PgPool,
}

/// Why storage could not answer: the request gets `unavailable`, and nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL unavailable (seeding a team's counters or reading a message): {0}")]
    Postgres(#[from] sqlx::Error),
}

impl Storage {
    pub fn new(broker: Broker, db: PgPool) -> Self {
        Self { broker, db }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Appends a durable event; the ack may be sent once this returns `Appended`.
    pub async fn append(&self, append: &Append<'_>) -> Result<AppendOutcome, StorageError> {
        let outcome = match self.broker.append(append, None).await? {
            AppendOutcome::Unseeded => {
                self.seed(append.team).await?;
                match self.broker.append(append, None).await? {
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
    async fn append_authored(&self, append: &Append<'_>) -> Result<AppendOutcome, StorageError> {
        let stored = history::author(&self.db, append.team, append.target)
            .await
            .inspect_err(|e| postgres_failed(append.team, e))?;
        let Some(stored) = stored.filter(|s| !s.deleted) else {
            return Ok(AppendOutcome::Refused(ErrorCode::NotFound));
        };
        let mut authored = Authored {
            user: stored.user_id,
            id: stored.id,
            reply: stored.parent.is_some(),
            reactions: None,
        };
        let mut outcome = self.broker.append(append, Some(&authored)).await?;
        // A reaction whose message's reactions Redis no longer holds: with them from
        // PostgreSQL (only then: they may be many).
        if outcome == AppendOutcome::LoadReactions {
            let reactions = history::reactions_of(&self.db, append.team, append.target)
                .await
                .inspect_err(|e| postgres_failed(append.team, e))?;
            authored.reactions = Some(reactions);
            outcome = self.broker.append(append, Some(&authored)).await?;
        }
        match outcome {
            // The team's Redis state went away between the calls: nothing was written.
            AppendOutcome::Unseeded | AppendOutcome::Lookup | AppendOutcome::LoadReactions => {
                Err(still_unseeded())
            }
            outcome => Ok(outcome),
        }
    }

    /// The team's epoch, newest offset and seq, and receipts.
    pub async fn team_state(&self, team: &str) -> Result<TeamState, StorageError> {
        if let Some(state) = self.broker.team_state(team).await? {
            return Ok(state);
        }
        self.seed(team).await?;
        self.broker
            .team_state(team)
            .await?
            .ok_or_else(still_unseeded)
    }

    /// Sets the counters of a team that has none after what PostgreSQL holds and what
    /// Redis still has. Once per team while Redis keeps its state.
    async fn seed(&self, team: &str) -> Result<(), StorageError> {
        let floor = floor::read(&self.db, team)
            .await
            .inspect_err(|e| postgres_failed(team, e))?;
        // The team's stream was lost: the offsets between the sync watermark and the floor
        // that were never synced are gone with it. The watermark passes them, so it moves
        // on with the offsets to come, and history stops reading the stream for them.
        if floor.offset > floor.watermark && !self.broker.stream_exists(team).await? {
            watermark::pass_through(&self.db, team, floor.offset)
                .await
                .inspect_err(|e| postgres_failed(team, e))?;
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
        self.broker
            .seed_team(team, floor.seq, floor.offset, &pinned)
            .await?;
        Ok(())
    }
}

/// The most pins a team's seeding restores (the most recent; the pins list shows as many).
const MAX_SEEDED_PINS: i64 = 1_000;

fn postgres_failed(team: &str, e: &sqlx::Error) {
    tracing::warn!(error = %e, team, "PostgreSQL unavailable");
}

/// A team's counters still missing right after it was seeded.
fn still_unseeded() -> StorageError {
    StorageError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "team's counters missing right after seeding",
    )))
}
