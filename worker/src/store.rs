//! PostgreSQL writes of the worker: one transaction per batch, every statement an
//! idempotent upsert so that redelivered or reordered entries never double a row.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use teamchat_shared::event::EventKind;

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

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
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
    pub async fn write_batch(&self, batch: &[Entry]) -> anyhow::Result<()> {
        let mut messages = MessageColumns::default();
        let (mut sync_team, mut sync_offset) = (Vec::new(), Vec::new());
        let (mut dead_stream, mut dead_id, mut dead_fields, mut dead_error) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for entry in batch {
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
            match event.kind {
                EventKind::Message => {
                    let d = &event.data;
                    messages.team.push(event.team.clone());
                    messages.seq.push(event.seq as i64);
                    messages.id.push(d.id.clone());
                    messages.client_id.push(d.client_id.clone());
                    messages.user_id.push(d.user.clone());
                    messages.name.push(d.name.clone());
                    messages.body.push(d.body.clone());
                    messages.meta.push(d.meta.as_ref().map(|m| m.to_string()));
                    messages.ts.push(d.ts);
                    messages.offset.push(event.offset as i64);
                }
            }
        }

        let mut tx = self.pool.begin().await?;
        if !messages.team.is_empty() {
            sqlx::query(
                r#"INSERT INTO messages (team, seq, id, client_id, user_id, name, body, meta, ts, "offset", version)
                   SELECT t, s, i, c, u, n, b, m::jsonb, ts, o, o
                   FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::text[], $9::int8[], $10::int8[])
                        AS x(t, s, i, c, u, n, b, m, ts, o)
                   ON CONFLICT (team, seq) DO NOTHING"#,
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
    sqlx::query(
        r#"INSERT INTO synced_ahead (team, "offset") SELECT * FROM UNNEST($1::text[], $2::int8[])
           ON CONFLICT DO NOTHING"#,
    )
    .bind(teams)
    .bind(offsets)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO team_sync (team) SELECT DISTINCT t FROM UNNEST($1::text[]) AS x(t)
         ON CONFLICT DO NOTHING",
    )
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT team FROM team_sync WHERE team = ANY($1) ORDER BY team FOR UPDATE")
        .bind(teams)
        .execute(&mut *tx)
        .await?;
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
    sqlx::query(
        r#"DELETE FROM synced_ahead a USING team_sync s
           WHERE a.team = s.team AND s.team = ANY($1) AND a."offset" <= s.synced_offset"#,
    )
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
