//! PostgreSQL writes of the worker: one transaction per batch, every statement an
//! idempotent upsert so that redelivered or reordered entries never double a row.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
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

    /// Writes one batch atomically: in the usual case one statement (messages, credits and
    /// watermarks) in its own transaction, a single round trip. Edits, deletes, receipts
    /// and dead letters add statements to that transaction. Offsets the watermark cannot
    /// cover yet (past a gap) are recorded afterwards in a second transaction: until then
    /// the watermark only stays lower than it could be, which is always safe.
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
        let runs = TeamOffsets::new(&synced);
        let alone = changes.edits.is_empty()
            && changes.deletes.is_empty()
            && changes.receipts.is_empty()
            && dead.is_empty();

        let mut conn = self.pool.acquire().await?;
        let watermarks = if alone {
            store(&mut conn, &messages, &ledger, &runs).await?
        } else {
            let mut tx = conn.begin().await?;
            let watermarks = store(&mut tx, &messages, &ledger, &runs).await?;
            write_amendments(&mut tx, &changes).await?;
            write_dead_letters(&mut tx, &dead).await?;
            tx.commit().await?;
            watermarks
        };
        // Teams whose offsets in this batch the watermark does not cover, or with offsets
        // of other batches waiting past a gap that may now follow on.
        let behind: Vec<(&str, i64)> = synced
            .iter()
            .filter(|(team, _)| {
                watermarks.iter().any(|(t, watermark, waiting)| {
                    t == team && (*waiting || *watermark < runs.teams[team].high)
                })
            })
            .copied()
            .collect();
        if !behind.is_empty() {
            let mut tx = conn.begin().await?;
            record_synced(&mut tx, &behind).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Each team's offsets in a batch.
struct TeamOffsets<'a> {
    teams: BTreeMap<&'a str, Run>,
}

struct Run {
    low: i64,
    high: i64,
    /// Whether the offsets are every one from `low` to `high`.
    contiguous: bool,
}

impl<'a> TeamOffsets<'a> {
    fn new(synced: &[(&'a str, i64)]) -> Self {
        let mut seen: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
        for (team, offset) in synced {
            seen.entry(team).or_default().insert(*offset);
        }
        let teams = seen
            .into_iter()
            .map(|(team, offsets)| {
                let (low, high) = (*offsets.first().unwrap(), *offsets.last().unwrap());
                let contiguous = high - low + 1 == offsets.len() as i64;
                (
                    team,
                    Run {
                        low,
                        high,
                        contiguous,
                    },
                )
            })
            .collect();
        Self { teams }
    }
}

/// The batch's messages, its credit ledger rows, the users' balances and the teams'
/// watermarks, in one statement. Returns each team's watermark after it and whether
/// offsets wait past a gap.
///
/// A message row already there is either this message (redelivered: nothing to do) or the
/// placeholder of an edit or delete that arrived first: it is filled in, keeping the newer
/// edit's body and a deletion. A redelivered event finds its ledger row and is not charged
/// twice: only new ledger rows are added to the balances. A team's watermark jumps over
/// the batch's offsets when they are a run that starts at or before the offset after it;
/// the team rows are locked first (in team order, then the balances in user order, in
/// every transaction: no deadlocks) and the watermark is compared on the newest row.
async fn store(
    conn: &mut sqlx::PgConnection,
    messages: &MessageColumns<'_>,
    ledger: &LedgerColumns<'_>,
    runs: &TeamOffsets<'_>,
) -> sqlx::Result<Vec<(String, i64, bool)>> {
    let (mut team, mut low, mut high, mut contiguous) = (vec![], vec![], vec![], vec![]);
    for (t, run) in &runs.teams {
        team.push(*t);
        low.push(run.low);
        high.push(run.high);
        contiguous.push(run.contiguous);
    }
    sqlx::query_as(
        r#"WITH synced AS (
               INSERT INTO team_sync AS w (team, synced_offset)
               SELECT t, CASE WHEN r AND l <= 1 THEN h ELSE 0 END
               FROM UNNEST($16::text[], $17::int8[], $18::int8[], $19::bool[]) AS x(t, l, h, r)
               ORDER BY t
               ON CONFLICT (team) DO UPDATE SET synced_offset = (
                   SELECT CASE WHEN r AND l <= w.synced_offset + 1 THEN GREATEST(h, w.synced_offset)
                               ELSE w.synced_offset END
                   FROM UNNEST($16::text[], $17::int8[], $18::int8[], $19::bool[]) AS y(t, l, h, r)
                   WHERE y.t = EXCLUDED.team)
               RETURNING w.team, w.synced_offset, w.waiting),
           stored AS (
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
               RETURNING user_id, cost),
           balanced AS (
               INSERT INTO credit_balances (user_id, used)
               SELECT user_id, sum(cost) FROM charged GROUP BY user_id ORDER BY user_id
               ON CONFLICT (user_id) DO UPDATE SET used = credit_balances.used + EXCLUDED.used)
           SELECT team, synced_offset, waiting FROM synced"#,
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
    .bind(&team)
    .bind(&low)
    .bind(&high)
    .bind(&contiguous)
    .fetch_all(&mut *conn)
    .await
}

async fn write_dead_letters(
    tx: &mut sqlx::PgConnection,
    dead: &[(&Entry, &str)],
) -> sqlx::Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let (mut stream, mut id, mut fields, mut error) = (vec![], vec![], vec![], vec![]);
    for (entry, why) in dead {
        stream.push(entry.stream.as_str());
        id.push(entry.id.as_str());
        fields.push(entry.fields_json().to_string());
        error.push(*why);
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
        // Offsets synced past the old watermark may now follow on from the new one.
        settle_watermarks(&mut tx, &[team]).await?;
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
        // Team rows before balances, as in every transaction.
        if let Some((team, offset)) = &position {
            record_synced(&mut tx, &[(team, *offset as i64)]).await?;
        }
        // Its credits were counted when it was appended: the ledger counts them too.
        if let Ok(event) = &entry.event
            && event.cost > 0
        {
            let ledger = LedgerColumns::new(vec![event]);
            let runs = TeamOffsets::new(&[]);
            store(&mut tx, &MessageColumns::default(), &ledger, &runs).await?;
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

/// Records synced offsets that the watermark may not cover yet and moves each team's
/// contiguous watermark (`team_sync.synced_offset`) as far as the offsets synced so far
/// allow.
///
/// Workers commit out of order, so offsets past a gap wait in `synced_ahead`, and the
/// team row says so (`waiting`). The team rows are locked (in team order, against
/// deadlocks) before anything is read: the statements after the lock see every offset
/// committed by the transactions before it, and a transaction whose offsets were not yet
/// visible to another moves the watermark itself.
async fn record_synced(tx: &mut sqlx::PgConnection, synced: &[(&str, i64)]) -> sqlx::Result<()> {
    let mut offsets: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for (team, offset) in synced {
        offsets.entry(team).or_default().insert(*offset);
    }
    let teams: Vec<&str> = offsets.keys().copied().collect();
    // Creates missing rows and locks them all; a no-op update locks the row as FOR UPDATE
    // would, and also one a concurrent transaction is inserting.
    let watermarks: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO team_sync (team) SELECT * FROM UNNEST($1::text[])
         ON CONFLICT (team) DO UPDATE SET synced_offset = team_sync.synced_offset
         RETURNING team, synced_offset",
    )
    .bind(&teams)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ahead_team, mut ahead_offset) = (Vec::new(), Vec::new());
    for (team, watermark) in &watermarks {
        for offset in offsets[team.as_str()].range(watermark + 1..) {
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
    settle_watermarks(tx, &teams).await
}

/// Moves the (locked) teams' watermarks over the waiting offsets that now follow on,
/// deletes the offsets they passed, and sets the rows' `waiting`.
async fn settle_watermarks(tx: &mut sqlx::PgConnection, teams: &[&str]) -> sqlx::Result<()> {
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
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    // Then what the watermark passed goes, and the rows say whether any offset still waits.
    sqlx::query(
        r#"WITH passed AS (
               DELETE FROM synced_ahead a USING team_sync s
               WHERE a.team = s.team AND s.team = ANY($1) AND a."offset" <= s.synced_offset)
           UPDATE team_sync s SET waiting = EXISTS (
               SELECT 1 FROM synced_ahead a WHERE a.team = s.team AND a."offset" > s.synced_offset)
           WHERE s.team = ANY($1)"#,
    )
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
