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
struct MessageColumns {
    team: Vec<String>,
    seq: Vec<i64>,
    id: Vec<String>,
    client_id: Vec<String>,
    user_id: Vec<String>,
    name: Vec<Option<String>>,
    body: Vec<String>,
    meta: Vec<Option<String>>,
    ts: Vec<i64>,
    offset: Vec<i64>,
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

    /// Writes one batch in one transaction.
    pub async fn write_batch<E: Borrow<Entry>>(&self, batch: &[E]) -> anyhow::Result<()> {
        let mut changes = Changes::default();
        let mut charges: Vec<&StreamEvent> = Vec::new();
        let (mut sync_team, mut sync_offset) = (Vec::new(), Vec::new());
        let (mut dead_stream, mut dead_id, mut dead_fields, mut dead_error) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for entry in batch {
            let entry: &Entry = entry.borrow();
            let event = match &entry.event {
                Ok(event) => event,
                Err(error) => {
                    dead_stream.push(entry.stream.clone());
                    dead_id.push(entry.id.clone());
                    dead_fields.push(entry.fields.to_string());
                    dead_error.push(error.clone());
                    if let Some((team, offset)) = &entry.position {
                        sync_team.push(team.clone());
                        sync_offset.push(*offset as i64);
                    }
                    continue;
                }
            };
            sync_team.push(event.team.clone());
            sync_offset.push(event.offset as i64);
            changes.add(event);
            if event.cost > 0 {
                charges.push(event);
            }
        }
        let mut messages = MessageColumns::default();
        for ((team, seq), (offset, d)) in &changes.messages {
            messages.team.push(team.to_string());
            messages.seq.push(*seq as i64);
            messages.id.push(d.id.clone());
            messages.client_id.push(d.client_id.clone());
            messages.user_id.push(d.user.clone());
            messages.name.push(d.name.clone());
            messages.body.push(d.body.clone());
            messages.meta.push(d.meta.as_ref().map(|m| m.to_string()));
            messages.ts.push(d.ts);
            messages.offset.push(*offset as i64);
        }

        let mut tx = self.pool.begin().await?;
        if !messages.team.is_empty() {
            sqlx::query(
                // A row already there is either this message (redelivered: nothing to do) or
                // the placeholder of an edit or delete that arrived first: fill it in, keeping
                // the newer edit's body and a deletion.
                r#"INSERT INTO messages AS m (team, seq, id, client_id, user_id, name, body, meta, ts, "offset", version)
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
                   WHERE m.id IS NULL"#,
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
            .execute(&mut *tx)
            .await?;
        }
        write_amendments(&mut tx, &changes).await?;
        charge(&mut tx, &charges).await?;
        if !sync_team.is_empty() {
            advance_watermarks(&mut tx, &sync_team, &sync_offset).await?;
        }
        if !dead_id.is_empty() {
            sqlx::query(
                "INSERT INTO dead_letters (stream, entry_id, fields, error)
                 SELECT s, i, f::jsonb, e FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(s, i, f, e)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&dead_stream)
            .bind(&dead_id)
            .bind(&dead_fields)
            .bind(&dead_error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
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
        .bind(entry.fields.to_string())
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if let Some((team, offset)) = position {
            advance_watermarks(&mut tx, &[team], &[offset as i64]).await?;
        }
        // Its credits were counted when it was appended: the ledger counts them too.
        if let Ok(event) = &entry.event
            && event.cost > 0
        {
            charge(&mut tx, &[event]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Writes a ledger row per charged event and adds the new rows' costs to the users'
/// balances, in one statement: a redelivered event finds its ledger row and is not
/// charged twice.
async fn charge(tx: &mut sqlx::PgConnection, events: &[&StreamEvent]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // Rows are locked in one order in every transaction, so concurrent workers cannot
    // deadlock on them.
    let mut events = events.to_vec();
    events.sort_by(|a, b| (&a.team, a.offset).cmp(&(&b.team, b.offset)));
    let (mut team, mut offset, mut user, mut kind, mut cost) =
        (vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        team.push(event.team.clone());
        offset.push(event.offset as i64);
        user.push(event.data.user().to_owned());
        kind.push(event.kind().as_str());
        cost.push(event.cost as i64);
    }
    sqlx::query(
        r#"WITH new AS (
               INSERT INTO credit_ledger (team, "offset", user_id, kind, cost)
               SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[])
               ON CONFLICT DO NOTHING
               RETURNING user_id, cost)
           INSERT INTO credit_balances (user_id, used)
           SELECT user_id, sum(cost) FROM new GROUP BY user_id ORDER BY user_id
           ON CONFLICT (user_id) DO UPDATE SET used = credit_balances.used + EXCLUDED.used"#,
    )
    .bind(&team)
    .bind(&offset)
    .bind(&user)
    .bind(&kind)
    .bind(&cost)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
async fn advance_watermarks(
    tx: &mut sqlx::PgConnection,
    teams: &[String],
    offsets: &[i64],
) -> sqlx::Result<()> {
    // Per team: the batch's lowest and highest offset and how many distinct ones.
    let mut seen: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for (team, offset) in teams.iter().zip(offsets) {
        seen.entry(team.as_str()).or_default().insert(*offset);
    }
    let runs: BTreeMap<&str, (i64, i64, i64)> = seen
        .iter()
        .map(|(team, offsets)| {
            let (low, high) = (*offsets.first().unwrap(), *offsets.last().unwrap());
            (*team, (low, high, offsets.len() as i64))
        })
        .collect();
    let distinct: Vec<&str> = runs.keys().copied().collect();
    sqlx::query(
        "INSERT INTO team_sync (team) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&distinct)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT team FROM team_sync WHERE team = ANY($1) ORDER BY team FOR UPDATE")
        .bind(&distinct)
        .execute(&mut *tx)
        .await?;
    // The usual case: a team's offsets in the batch are a run that starts right after its
    // watermark. The watermark jumps to the run's end; the run never touches synced_ahead.
    let (mut run_team, mut run_low, mut run_high) = (Vec::new(), Vec::new(), Vec::new());
    for (team, (low, high, count)) in &runs {
        if high - low + 1 == *count {
            run_team.push(*team);
            run_low.push(*low);
            run_high.push(*high);
        }
    }
    let advanced: Vec<String> = sqlx::query_scalar(
        "UPDATE team_sync t SET synced_offset = x.high
         FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(team, low, high)
         WHERE t.team = x.team AND t.synced_offset = x.low - 1
         RETURNING t.team",
    )
    .bind(&run_team)
    .bind(&run_low)
    .bind(&run_high)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ahead_team, mut ahead_offset) = (Vec::new(), Vec::new());
    for (team, offset) in teams.iter().zip(offsets) {
        if !advanced.contains(team) {
            ahead_team.push(team.as_str());
            ahead_offset.push(*offset);
        }
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
    // Offsets other transactions left past a gap may now follow on.
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
    .bind(&distinct)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"DELETE FROM synced_ahead a USING team_sync s
           WHERE a.team = s.team AND s.team = ANY($1) AND a."offset" <= s.synced_offset"#,
    )
    .bind(&distinct)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
