//! PostgreSQL writes of the worker: one transaction per batch, every statement an
//! idempotent upsert so that redelivered or reordered entries never double a row.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::borrow::Borrow;
use std::collections::BTreeMap;

use teamchat_shared::event::{EditData, EventData, MessageData, StreamEvent};

use crate::ingest::Entry;

pub struct Store {
    pool: PgPool,
}

/// The batch's messages, column by column, for one UNNEST insert.
#[derive(Default)]
struct MessageColumns<'a> {
    team: Vec<&'a str>,
    seq: Vec<i64>,
    id: Vec<&'a str>,
    client_id: Vec<&'a str>,
    user_id: Vec<&'a str>,
    name: Vec<Option<&'a str>>,
    body: Vec<&'a str>,
    meta: Vec<Option<String>>,
    ts: Vec<i64>,
    offset: Vec<i64>,
}

impl<'a> MessageColumns<'a> {
    fn new(messages: &BTreeMap<(&'a str, u64), (u64, &'a MessageData)>) -> Self {
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
        }
        columns
    }
}

/// The charged events, column by column, for the credit ledger.
#[derive(Default)]
struct LedgerColumns<'a> {
    team: Vec<&'a str>,
    offset: Vec<i64>,
    user_id: Vec<&'a str>,
    kind: Vec<&'static str>,
    cost: Vec<i64>,
}

impl<'a> LedgerColumns<'a> {
    fn new(mut events: Vec<&'a StreamEvent>) -> Self {
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
struct Changes<'a> {
    messages: BTreeMap<(&'a str, u64), (u64, &'a MessageData)>,
    /// The newest edit of each message.
    edits: BTreeMap<(&'a str, u64), (u64, &'a EditData)>,
    /// The newest delete offset of each message.
    deletes: BTreeMap<(&'a str, u64), u64>,
    /// Each user's highest receipt: seq and its offset.
    receipts: BTreeMap<(&'a str, &'a str), (u64, u64)>,
}

impl<'a> Changes<'a> {
    fn add(&mut self, event: &'a StreamEvent) {
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

impl Store {
    /// A pool of `writers` connections for batch writes plus one for everything else.
    pub async fn connect(url: &str, writers: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(writers + 1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/`; safe when several workers start at once.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        // Retry while PostgreSQL is still starting.
        let mut attempts = 0;
        loop {
            match sqlx::migrate!("../migrations").run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 30 => {
                    attempts += 1;
                    tracing::warn!(error = %e, "migrations not applied yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes one batch in one transaction: usually four statements (messages with their
    /// credits, the teams' rows locked, the watermarks moved) between BEGIN and COMMIT.
    pub async fn write_batch<E: Borrow<Entry>>(&self, batch: &[E]) -> anyhow::Result<()> {
        let mut changes = Changes::default();
        let mut charges: Vec<&StreamEvent> = Vec::new();
        let mut synced: Vec<(&str, i64)> = Vec::with_capacity(batch.len());
        let mut dead: Vec<(&Entry, &str)> = Vec::new();
        for entry in batch {
            let entry: &Entry = entry.borrow();
            let event = match &entry.event {
                Ok(event) => event,
                Err(error) => {
                    dead.push((entry, error));
                    if let Some((team, offset)) = &entry.position {
                        synced.push((team, *offset as i64));
                    }
                    continue;
                }
            };
            synced.push((&event.team, event.offset as i64));
            changes.add(event);
            if event.cost > 0 {
                charges.push(event);
            }
        }
        let messages = MessageColumns::new(&changes.messages);
        let ledger = LedgerColumns::new(charges);

        let mut tx = self.pool.begin().await?;
        if !messages.team.is_empty() || !ledger.team.is_empty() {
            store_messages_and_charges(&mut tx, &messages, &ledger).await?;
        }
        write_amendments(&mut tx, &changes).await?;
        if !synced.is_empty() {
            advance_watermarks(&mut tx, &synced).await?;
        }
        if !dead.is_empty() {
            let (mut stream, mut id, mut fields, mut error) = (vec![], vec![], vec![], vec![]);
            for (entry, why) in dead {
                stream.push(entry.stream.as_str());
                id.push(entry.id.as_str());
                fields.push(entry.fields_json().to_string());
                error.push(why);
            }
            sqlx::query(
                "INSERT INTO dead_letters (stream, entry_id, fields, error)
                 SELECT s, i, f::jsonb, e FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(s, i, f, e)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&stream)
            .bind(&id)
            .bind(&fields)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The batch's messages, its credit ledger rows and the users' balances, in one statement
/// (one round trip).
///
/// A message row already there is either this message (redelivered: nothing to do) or the
/// placeholder of an edit or delete that arrived first: it is filled in, keeping the newer
/// edit's body and a deletion. A redelivered event finds its ledger row and is not charged
/// twice: only new ledger rows are added to the balances.
async fn store_messages_and_charges(
    tx: &mut sqlx::PgConnection,
    messages: &MessageColumns<'_>,
    ledger: &LedgerColumns<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"WITH stored AS (
               INSERT INTO messages AS m (team, seq, id, client_id, user_id, name, body, meta, ts, "offset", version)
               SELECT t, s, i, c, u, n, b, md::jsonb, ts, o, o
               FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::int8[], $10::int8[])
                    AS x(t, s, i, c, u, n, b, md, ts, o)
               ON CONFLICT (team, seq) DO UPDATE SET
                   id = EXCLUDED.id, client_id = EXCLUDED.client_id, user_id = EXCLUDED.user_id,
                   name = EXCLUDED.name, meta = EXCLUDED.meta, ts = EXCLUDED.ts, "offset" = EXCLUDED."offset",
                   body = CASE WHEN m.deleted THEN '' WHEN m.version > EXCLUDED.version THEN m.body
                               ELSE EXCLUDED.body END,
                   version = GREATEST(m.version, EXCLUDED.version)
               WHERE m.id IS NULL),
           charged AS (
               INSERT INTO credit_ledger (team, "offset", user_id, kind, cost)
               SELECT * FROM UNNEST($11::text[], $12::int8[], $13::text[], $14::text[], $15::int8[])
               ON CONFLICT DO NOTHING
               RETURNING user_id, cost)
           INSERT INTO credit_balances (user_id, used)
           SELECT user_id, sum(cost) FROM charged GROUP BY user_id ORDER BY user_id
           ON CONFLICT (user_id) DO UPDATE SET used = credit_balances.used + EXCLUDED.used"#,
    )
    .bind(&messages.team)
    .bind(&messages.seq)
    .bind(&messages.id)
    .bind(&messages.client_id)
    .bind(&messages.user_id)
    .bind(&messages.name)
    .bind(&messages.body)
    .bind(&messages.meta)
    .bind(&messages.ts)
    .bind(&messages.offset)
    .bind(&ledger.team)
    .bind(&ledger.offset)
    .bind(&ledger.user_id)
    .bind(&ledger.kind)
    .bind(&ledger.cost)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether PostgreSQL refused the data itself (SQLSTATE classes 22 and 23): trying the
/// same rows again cannot help.
pub fn is_data_error(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

impl Store {
    /// Records that everything of `team` up to `offset` is in PostgreSQL (after a replay
    /// wrote the whole stream up to there; what the stream no longer holds is gone anyway).
    pub async fn mark_synced_through(&self, team: &str, offset: u64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO team_sync (team, synced_offset) VALUES ($1, $2)
             ON CONFLICT (team) DO UPDATE SET synced_offset = GREATEST(team_sync.synced_offset, $2)",
        )
        .bind(team)
        .bind(offset as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(r#"DELETE FROM synced_ahead WHERE team = $1 AND "offset" <= $2"#)
            .bind(team)
            .bind(offset as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves one entry to the dead letters, counting its offset as synced (in one
    /// transaction), so the team's watermark moves on.
    pub async fn dead_letter(&self, entry: &Entry, error: &str) -> anyhow::Result<()> {
        let position = match &entry.event {
            Ok(event) => Some((event.team.clone(), event.offset)),
            Err(_) => entry.position.clone(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO dead_letters (stream, entry_id, fields, error) VALUES ($1, $2, $3::jsonb, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&entry.stream)
        .bind(&entry.id)
        .bind(entry.fields_json().to_string())
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if let Some((team, offset)) = &position {
            advance_watermarks(&mut tx, &[(team, *offset as i64)]).await?;
        }
        // Its credits were counted when it was appended: the ledger counts them too.
        if let Ok(event) = &entry.event
            && event.cost > 0
        {
            let ledger = LedgerColumns::new(vec![event]);
            store_messages_and_charges(&mut tx, &MessageColumns::default(), &ledger).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Edits (newest offset wins, never over a deletion), deletes (final, whatever the order)
/// and receipts (the highest seq wins): each commutes with the others and with the message.
async fn write_amendments(tx: &mut sqlx::PgConnection, changes: &Changes<'_>) -> sqlx::Result<()> {
    if !changes.edits.is_empty() {
        let (mut team, mut seq, mut body, mut edited_at, mut version) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((t, s), (offset, edit)) in &changes.edits {
            team.push(t.to_string());
            seq.push(*s as i64);
            body.push(edit.body.clone());
            edited_at.push(edit.ts);
            version.push(*offset as i64);
        }
        sqlx::query(
            "INSERT INTO messages AS m (team, seq, body, edited_at, version)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[])
             ON CONFLICT (team, seq) DO UPDATE SET
                 body = EXCLUDED.body, edited_at = EXCLUDED.edited_at, version = EXCLUDED.version
             WHERE m.version < EXCLUDED.version AND NOT m.deleted",
        )
        .bind(&team)
        .bind(&seq)
        .bind(&body)
        .bind(&edited_at)
        .bind(&version)
        .execute(&mut *tx)
        .await?;
    }
    if !changes.deletes.is_empty() {
        let (mut team, mut seq, mut version) = (vec![], vec![], vec![]);
        for ((t, s), offset) in &changes.deletes {
            team.push(t.to_string());
            seq.push(*s as i64);
            version.push(*offset as i64);
        }
        sqlx::query(
            "INSERT INTO messages AS m (team, seq, body, deleted, version)
             SELECT t, s, '', true, o FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(t, s, o)
             ON CONFLICT (team, seq) DO UPDATE SET
                 deleted = true, body = '', version = GREATEST(m.version, EXCLUDED.version)",
        )
        .bind(&team)
        .bind(&seq)
        .bind(&version)
        .execute(&mut *tx)
        .await?;
    }
    if !changes.receipts.is_empty() {
        let (mut team, mut user, mut seq, mut offset) = (vec![], vec![], vec![], vec![]);
        for ((t, u), (s, o)) in &changes.receipts {
            team.push(t.to_string());
            user.push(u.to_string());
            seq.push(*s as i64);
            offset.push(*o as i64);
        }
        sqlx::query(
            r#"INSERT INTO receipts AS r (team, user_id, seq, "offset")
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])
               ON CONFLICT (team, user_id) DO UPDATE SET seq = EXCLUDED.seq, "offset" = EXCLUDED."offset"
               WHERE r.seq < EXCLUDED.seq"#,
        )
        .bind(&team)
        .bind(&user)
        .bind(&seq)
        .bind(&offset)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Records the batch's offsets and moves each team's contiguous watermark
/// (`team_sync.synced_offset`) as far as the offsets synced so far allow.
///
/// Workers commit out of order, so offsets past a gap wait in `synced_ahead`. The team rows
/// are locked (in team order, against deadlocks) before the watermark is computed: the
/// statements after the lock see every offset committed by the transactions before it, and
/// a transaction whose offsets were not yet visible advances the watermark itself.
///
/// The usual case takes two statements: the lock, and the watermark jumping over the
/// batch's run of offsets right after it. `synced_ahead` is written and read only for a
/// team whose offsets are not such a run or that has offsets waiting there.
async fn advance_watermarks(
    tx: &mut sqlx::PgConnection,
    synced: &[(&str, i64)],
) -> sqlx::Result<()> {
    // Per team: the batch's distinct offsets.
    let mut seen: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for (team, offset) in synced {
        seen.entry(team).or_default().insert(*offset);
    }
    let teams: Vec<&str> = seen.keys().copied().collect();
    // Creates missing rows and locks them all, in team order (a no-op update locks the
    // row as FOR UPDATE would, and also one a concurrent transaction is inserting).
    sqlx::query(
        "INSERT INTO team_sync (team) SELECT * FROM UNNEST($1::text[])
         ON CONFLICT (team) DO UPDATE SET synced_offset = team_sync.synced_offset",
    )
    .bind(&teams)
    .execute(&mut *tx)
    .await?;
    // A team whose offsets in the batch are a run starting right after its watermark:
    // the watermark jumps to the run's end.
    let (mut run_team, mut run_low, mut run_high) = (Vec::new(), Vec::new(), Vec::new());
    for (team, offsets) in &seen {
        let (low, high) = (*offsets.first().unwrap(), *offsets.last().unwrap());
        if high - low + 1 == offsets.len() as i64 {
            run_team.push(*team);
            run_low.push(low);
            run_high.push(high);
        }
    }
    let outcome: Vec<(String, bool)> = sqlx::query_as(
        "WITH advanced AS (
             UPDATE team_sync t SET synced_offset = x.high
             FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(team, low, high)
             WHERE t.team = x.team AND t.synced_offset = x.low - 1
             RETURNING t.team)
         SELECT team, true FROM advanced
         UNION ALL
         SELECT DISTINCT team, false FROM synced_ahead WHERE team = ANY($4)",
    )
    .bind(&run_team)
    .bind(&run_low)
    .bind(&run_high)
    .bind(&teams)
    .fetch_all(&mut *tx)
    .await?;
    let advanced: Vec<&str> = outcome
        .iter()
        .filter(|(_, advanced)| *advanced)
        .map(|(team, _)| team.as_str())
        .collect();
    let (mut ahead_team, mut ahead_offset) = (Vec::new(), Vec::new());
    for (team, offsets) in &seen {
        if !advanced.contains(team) {
            for offset in offsets {
                ahead_team.push(*team);
                ahead_offset.push(*offset);
            }
        }
    }
    // Teams whose offsets wait in synced_ahead now, this batch's or others'.
    let mut waiting: Vec<&str> = outcome
        .iter()
        .filter(|(_, advanced)| !advanced)
        .map(|(team, _)| team.as_str())
        .chain(ahead_team.iter().copied())
        .collect();
    waiting.sort_unstable();
    waiting.dedup();
    if waiting.is_empty() {
        return Ok(());
    }
    if !ahead_team.is_empty() {
        sqlx::query(
            r#"INSERT INTO synced_ahead (team, "offset") SELECT * FROM UNNEST($1::text[], $2::int8[])
               ON CONFLICT DO NOTHING"#,
        )
        .bind(&ahead_team)
        .bind(&ahead_offset)
        .execute(&mut *tx)
        .await?;
    }
    // Offsets waiting past a gap may now follow on.
    sqlx::query(
        r#"UPDATE team_sync ts SET synced_offset = adv.top
           FROM (SELECT s.team, max(a."offset") AS top
                 FROM team_sync s
                 JOIN LATERAL (SELECT "offset", row_number() OVER (ORDER BY "offset") AS rn
                               FROM synced_ahead
                               WHERE team = s.team AND "offset" > s.synced_offset) a
                   ON a."offset" = s.synced_offset + a.rn
                 WHERE s.team = ANY($1)
                 GROUP BY s.team) adv
           WHERE ts.team = adv.team"#,
    )
    .bind(&waiting)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"DELETE FROM synced_ahead a USING team_sync s
           WHERE a.team = s.team AND s.team = ANY($1) AND a."offset" <= s.synced_offset"#,
    )
    .bind(&waiting)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
