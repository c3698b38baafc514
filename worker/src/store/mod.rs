//! PostgreSQL writes of the worker: one transaction per batch, every statement an
//! idempotent upsert so that redelivered or reordered entries never double a row. The
//! batch's column arrays are built in `columns`.

mod archive;
mod columns;

use std::borrow::Borrow;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use teamchat_shared::db::watermark;
use teamchat_shared::event::StreamEvent;

use self::archive::{ArchiveColumns, Partitions};
pub use self::archive::{drop_expired_months, horizon_ms};
use self::columns::{Changes, LedgerColumns, MessageColumns, TeamOffsets};
use crate::ingest::Entry;

pub struct Store {
    pool: PgPool,
    /// Where the pool connects, without its statement timeout (for migrations).
    options: PgConnectOptions,
    /// The event archive's partitions known to exist.
    partitions: Partitions,
    /// Events older than this are not archived (`ARCHIVE_RETENTION`).
    archive_retention: Option<Duration>,
}

impl Store {
    /// A pool of `writers` connections for batch writes plus one for everything else. With
    /// a `statement_timeout`, PostgreSQL cancels a statement that runs longer (a lock held
    /// elsewhere, a stall): the batch is retried instead of waiting forever.
    pub async fn connect(
        url: &str,
        writers: u32,
        statement_timeout: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let options: PgConnectOptions = url.parse().context("parsing DATABASE_URL")?;
        let mut pooled = options.clone();
        if let Some(timeout) = statement_timeout {
            let ms = timeout.as_millis().max(1).to_string();
            pooled = pooled.options([("statement_timeout", ms.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(writers + 1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(pooled);
        Ok(Self {
            pool,
            options,
            partitions: Partitions::default(),
            archive_retention: None,
        })
    }

    /// Events older than `retention` are not archived: their month's partition is dropped,
    /// or will be (`retention::drop_expired_months`).
    pub fn keep_archive_for(mut self, retention: Option<Duration>) -> Self {
        self.archive_retention = retention;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/`; safe when several workers start at once.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        // Retry while PostgreSQL is still starting.
        let mut attempts = 0;
        loop {
            // On a connection of its own: a migration may rightly run longer than a batch.
            let unbounded = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(self.options.clone());
            let migrated = sqlx::migrate!("../migrations").run(&unbounded).await;
            unbounded.close().await;
            match migrated {
                Ok(()) => return Ok(()),
                // A certificate that does not verify will not on the next try either
                // (rustls reports it as invalid data on the socket).
                Err(sqlx::migrate::MigrateError::Execute(e)) if is_tls_failure(&e) => {
                    anyhow::bail!(
                        "PostgreSQL's TLS handshake failed (see sslmode and sslrootcert in DATABASE_URL): {e}"
                    );
                }
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
        let mut archive = ArchiveColumns::default();
        let archived_since = archive::horizon_ms(self.archive_retention);
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
            if event.data.ts() >= archived_since {
                archive.push(entry, event);
            }
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
            && changes.pins.is_empty()
            && changes.reactions.is_empty()
            && dead.is_empty();

        self.partitions
            .ensure(&self.pool, archive.ts.iter().copied())
            .await?;
        let mut conn = self.pool.acquire().await?;
        let watermarks = if alone {
            store(&mut conn, &messages, &ledger, &archive, &runs).await?
        } else {
            let mut tx = conn.begin().await?;
            let watermarks = store(&mut tx, &messages, &ledger, &archive, &runs).await?;
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
            watermark::record_synced(&mut tx, &behind).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// The batch's messages, its credit ledger rows, the users' balances, its events into the
/// archive and the teams' watermarks, in one statement. Returns each team's watermark after it and whether
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
    archive: &ArchiveColumns<'_>,
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
               INSERT INTO messages AS m (team, seq, id, client_id, user_id, name, body, meta, ts, "offset", version,
                                          mentions, attachments, parent)
               SELECT t, s, i, c, u, n, b, md::jsonb, ts, o, o,
                      CASE WHEN mn IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(mn::jsonb)) END,
                      at::jsonb, p
               FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::int8[], $10::int8[], $20::text[], $21::text[],
                           $22::int8[])
                    AS x(t, s, i, c, u, n, b, md, ts, o, mn, at, p)
               ON CONFLICT (team, seq) DO UPDATE SET
                   id = EXCLUDED.id, client_id = EXCLUDED.client_id, user_id = EXCLUDED.user_id,
                   name = EXCLUDED.name, meta = EXCLUDED.meta, ts = EXCLUDED.ts, "offset" = EXCLUDED."offset",
                   body = CASE WHEN m.deleted THEN '' WHEN m.version > EXCLUDED.version THEN m.body
                               ELSE EXCLUDED.body END,
                   mentions = CASE WHEN m.deleted THEN NULL ELSE EXCLUDED.mentions END,
                   attachments = CASE WHEN m.deleted THEN NULL ELSE EXCLUDED.attachments END,
                   parent = EXCLUDED.parent,
                   version = GREATEST(m.version, EXCLUDED.version)
               WHERE m.id IS NULL
               RETURNING m.team, m.seq, m.parent, m.ts, m.user_id, m.mentions, m.deleted),
           counted AS (
               -- The unread counts of each message stored for the first time (one that
               -- was deleted first was counted by its delete).
               INSERT INTO unread_counts AS u (team, kind, user_id, level, bucket, n)
               SELECT c.team, c.kind, c.user_id, l.level, c.seq >> (8 * (l.level + 1)), count(*)
               FROM (SELECT team, 'm'::"char" AS kind, user_id, seq FROM stored WHERE NOT deleted
                     UNION ALL
                     SELECT DISTINCT s.team, '@'::"char", mn.user_id, s.seq
                     FROM stored s CROSS JOIN LATERAL unnest(s.mentions) AS mn(user_id)
                     WHERE NOT s.deleted AND mn.user_id <> s.user_id) c
               CROSS JOIN (VALUES (0::int2), (1::int2)) AS l(level)
               GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
               ON CONFLICT (team, kind, user_id, level, bucket) DO UPDATE SET n = u.n + EXCLUDED.n),
           threaded AS (
               -- Only messages stored for the first time come out of `stored`: each reply
               -- counts once, whatever is replayed or retried.
               INSERT INTO threads AS th (team, parent, reply_count, last_reply_ts)
               SELECT team, parent, count(*), max(ts) FROM stored WHERE parent IS NOT NULL
               GROUP BY team, parent ORDER BY team, parent
               ON CONFLICT (team, parent) DO UPDATE SET
                   reply_count = th.reply_count + EXCLUDED.reply_count,
                   last_reply_ts = GREATEST(th.last_reply_ts, EXCLUDED.last_reply_ts)),
           charged AS (
               INSERT INTO credit_ledger (team, "offset", user_id, kind, cost)
               SELECT * FROM UNNEST($11::text[], $12::int8[], $13::text[], $14::text[], $15::int8[])
               ON CONFLICT DO NOTHING
               RETURNING user_id, cost),
           balanced AS (
               INSERT INTO credit_balances (user_id, used)
               SELECT user_id, sum(cost) FROM charged GROUP BY user_id ORDER BY user_id
               ON CONFLICT (user_id) DO UPDATE SET used = credit_balances.used + EXCLUDED.used),
           archived AS (
               -- A redelivered event meets its row (same team, offset and time).
               INSERT INTO events (team, "offset", at, kind, seq, user_id, cost, data)
               SELECT t, o, to_timestamp(ts / 1000.0), k, s, u, c, d::jsonb
               FROM UNNEST($23::text[], $24::int8[], $25::int8[], $26::text[], $27::int8[],
                           $28::text[], $29::int8[], $30::text[]) AS x(t, o, ts, k, s, u, c, d)
               ON CONFLICT DO NOTHING)
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
    .bind(&messages.mentions)
    .bind(&messages.attachments)
    .bind(&messages.parent)
    .bind(&archive.team)
    .bind(&archive.offset)
    .bind(&archive.ts)
    .bind(&archive.kind)
    .bind(&archive.seq)
    .bind(&archive.user_id)
    .bind(&archive.cost)
    .bind(&archive.data)
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
        Ok(watermark::pass_through(&self.pool, team, offset as i64).await?)
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
            watermark::record_synced(&mut tx, &[(team, *offset as i64)]).await?;
        }
        // Its credits were counted when it was appended: the ledger counts them too.
        if let Ok(event) = &entry.event
            && event.cost > 0
        {
            let ledger = LedgerColumns::new(vec![event]);
            let runs = TeamOffsets::new(&[]);
            let archive = ArchiveColumns::default();
            store(
                &mut tx,
                &MessageColumns::default(),
                &ledger,
                &archive,
                &runs,
            )
            .await?;
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
        // A delete that applies for the first time moves the unread counts: one more
        // deleted message, one fewer of its author's and of its mentions (the rows as they
        // were before the statement tell; the team's batches are serialized by `store`).
        sqlx::query(
            r#"WITH input AS (
                   SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(team, seq, version)),
               before AS (
                   SELECT m.team, m.seq, m.deleted, m.user_id, m.mentions
                   FROM messages m JOIN input i USING (team, seq)),
               applied AS (
                   INSERT INTO messages AS m (team, seq, body, deleted, version)
                   SELECT team, seq, '', true, version FROM input
                   ON CONFLICT (team, seq) DO UPDATE SET
                       deleted = true, body = '', mentions = NULL, attachments = NULL,
                       version = GREATEST(m.version, EXCLUDED.version)
                   RETURNING m.team),
               flipped AS (
                   SELECT i.team, i.seq, b.user_id, b.mentions
                   FROM input i LEFT JOIN before b USING (team, seq)
                   WHERE b.deleted IS NOT TRUE)
               INSERT INTO unread_counts AS u (team, kind, user_id, level, bucket, n)
               SELECT c.team, c.kind, c.user_id, l.level, c.seq >> (8 * (l.level + 1)), sum(c.delta)
               FROM (SELECT team, 'd'::"char" AS kind, '' AS user_id, seq, 1 AS delta FROM flipped
                     UNION ALL
                     SELECT team, 'm'::"char", user_id, seq, -1 FROM flipped WHERE user_id IS NOT NULL
                     UNION ALL
                     SELECT DISTINCT f.team, '@'::"char", mn.user_id, f.seq, -1
                     FROM flipped f CROSS JOIN LATERAL unnest(f.mentions) AS mn(user_id)
                     WHERE mn.user_id <> f.user_id) c
               CROSS JOIN (VALUES (0::int2), (1::int2)) AS l(level)
               GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
               ON CONFLICT (team, kind, user_id, level, bucket) DO UPDATE SET n = u.n + EXCLUDED.n"#,
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
    if !changes.pins.is_empty() {
        let (mut team, mut seq, mut version, mut pinned, mut at) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((t, s), (offset, pin, ts)) in &changes.pins {
            team.push(t.to_string());
            seq.push(*s as i64);
            version.push(*offset as i64);
            pinned.push(*pin);
            at.push(*ts);
        }
        // A pin may reach PostgreSQL before its message: a placeholder row (no id) takes it,
        // as for edits; the newest by offset wins.
        sqlx::query(
            "INSERT INTO messages AS m (team, seq, body, version, pinned, pinned_at, pin_version)
             SELECT t, s, '', 0, p, at, v
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::bool[], $5::int8[]) AS x(t, s, v, p, at)
             ON CONFLICT (team, seq) DO UPDATE SET
                 pinned = EXCLUDED.pinned, pinned_at = EXCLUDED.pinned_at,
                 pin_version = EXCLUDED.pin_version
             WHERE m.pin_version < EXCLUDED.pin_version",
        )
        .bind(&team)
        .bind(&seq)
        .bind(&version)
        .bind(&pinned)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
    }
    if !changes.reactions.is_empty() {
        write_reactions(tx, changes).await?;
    }
    Ok(())
}

/// Reactions: each user's newest add or remove per message and emoji wins by offset
/// (`reactions`), and each message's count per emoji moves by what actually changed: the
/// rows as they were before the statement against those it changed. That comparison is
/// exact because the batch holds its teams' team_sync rows (locked by `store`): no other
/// transaction changes the same reactions meanwhile. The emoji's `first_offset` is the
/// oldest add ever seen (`LEAST`), the same in any order of batches. Its cost is the
/// batch's, not the number of reactions on a message.
async fn write_reactions(tx: &mut sqlx::PgConnection, changes: &Changes<'_>) -> sqlx::Result<()> {
    let (mut team, mut seq, mut user, mut emoji) = (vec![], vec![], vec![], vec![]);
    let (mut present, mut version, mut first_add) = (vec![], vec![], vec![]);
    for ((t, s, u, e), change) in &changes.reactions {
        team.push(*t);
        seq.push(*s as i64);
        user.push(*u);
        emoji.push(*e);
        present.push(change.add);
        version.push(change.offset as i64);
        first_add.push(change.first_add.map(|o| o as i64));
    }
    sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::bool[],
                                  $6::int8[], $7::int8[])
                 AS x(team, seq, user_id, emoji, present, version, first_add)),
         before AS (
             SELECT r.team, r.seq, r.user_id, r.emoji, r.present
             FROM reactions r JOIN input i USING (team, seq, user_id, emoji)),
         applied AS (
             INSERT INTO reactions AS r (team, seq, user_id, emoji, present, version)
             SELECT team, seq, user_id, emoji, present, version FROM input
             ORDER BY team, seq, user_id, emoji
             ON CONFLICT (team, seq, user_id, emoji) DO UPDATE SET
                 present = EXCLUDED.present, version = EXCLUDED.version
             WHERE r.version < EXCLUDED.version
             RETURNING r.team, r.seq, r.user_id, r.emoji, r.present),
         delta AS (
             SELECT i.team, i.seq, i.emoji,
                    sum(CASE WHEN a.present IS NULL OR a.present = COALESCE(b.present, false) THEN 0
                             WHEN a.present THEN 1 ELSE -1 END) AS d,
                    min(i.first_add) AS first_add
             FROM input i
             LEFT JOIN applied a USING (team, seq, user_id, emoji)
             LEFT JOIN before b USING (team, seq, user_id, emoji)
             GROUP BY i.team, i.seq, i.emoji)
         INSERT INTO reaction_counts AS c (team, seq, emoji, count, first_offset)
         SELECT team, seq, emoji, d, COALESCE(first_add, 9223372036854775807) FROM delta
         WHERE d <> 0 OR first_add IS NOT NULL
         ORDER BY team, seq, emoji
         ON CONFLICT (team, seq, emoji) DO UPDATE SET
             count = c.count + EXCLUDED.count,
             first_offset = LEAST(c.first_offset, EXCLUDED.first_offset)",
    )
    .bind(&team)
    .bind(&seq)
    .bind(&user)
    .bind(&emoji)
    .bind(&present)
    .bind(&version)
    .bind(&first_add)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether a connection failed in its TLS handshake (a certificate that does not verify).
fn is_tls_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}
