//! Storage sync: a backlog of events in the ingest streams drained by one worker, beside
//! PostgreSQL's own rate for the same messages written directly (UNNEST, multi-row INSERT,
//! COPY; batches of the same size, as many connections as the worker's writers) in the
//! same run, and for the messages
//! with their credit ledger rows, balances and event archive rows (everything the worker
//! writes but the watermarks); then the sync lag while events arrive at a steady rate.
//!
//! One file for the scenario (the worker's run, the direct writers it is compared with,
//! the lag phase), which reads as one piece; hence its length.

use std::time::{Duration, Instant};

use clap::{Args, Parser};
use hdrhistogram::Histogram;
use sqlx::{Connection, PgConnection, PgPool};
use teamchat_shared::config::WorkerConfig;
use teamchat_shared::keys::Keys;
use tokio_util::sync::CancellationToken;

use crate::report::{Row as Report, round};
use crate::stack::StackArgs;

const TEAMS: usize = 100;

// PostgreSQL writing the rows itself, one connection, a transaction per batch.
const UNNEST: &str = "UNNEST";
const VALUES: &str = "multi-row INSERT";
const COPY: &str = "COPY";
const WITH_CREDITS: &str = "UNNEST, with credit ledger + balances + archive";

#[derive(Args, Clone, Debug)]
pub struct SyncArgs {
    /// Events in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Credits per message (0 leaves the credit ledger out of the worker's writes).
    #[arg(long, default_value_t = 1)]
    pub cost: u64,
    /// The steady arrival rate of the lag measurement, events per second.
    #[arg(long, default_value_t = 10_000)]
    pub lag_rate: usize,
    #[arg(long, default_value_t = 10)]
    pub lag_seconds: u64,
    /// A reaction storm instead of messages: each team's first event is a message and the
    /// rest add and take back reactions on it (1,000 users, 8 emojis). Only the worker's
    /// rate is measured (PostgreSQL's own rates and the lag are the messages').
    #[arg(long)]
    pub reactions: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

struct Row {
    team: String,
    seq: i64,
    id: String,
    client_id: String,
    user: String,
    body: String,
    ts: i64,
    offset: i64,
}

impl Row {
    /// The event's data as its stream entry carries it.
    fn data(&self) -> String {
        serde_json::json!({"id": self.id, "client_id": self.client_id, "user": self.user,
                           "body": self.body, "ts": self.ts})
        .to_string()
    }
}

fn rows(n: usize, team_prefix: &str) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let (team, seq) = (i % TEAMS, (i / TEAMS) as i64 + 1);
            Row {
                team: format!("{team_prefix}{team}"),
                seq,
                id: format!("id-{i}"),
                client_id: format!("c-{i}"),
                user: format!("user{}", i % 1000),
                body: format!("message number {i}, of a typical length for a chat line"),
                ts: 1_795_000_000_000 + i as i64,
                offset: seq,
            }
        })
        .collect()
}

/// Rates table and lag table.
pub async fn run(args: &SyncArgs) -> anyhow::Result<(Vec<Report>, Vec<Report>)> {
    let name = format!("benchsync{}", std::process::id());
    let mut admin = PgConnection::connect(&args.stack.database_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let options: sqlx::postgres::PgConnectOptions = args.stack.database_url.parse()?;
    let database_url = sqlx::ConnectOptions::to_url_lossy(&options.database(&name)).to_string();
    let config = WorkerConfig::try_parse_from([
        "teamchat-worker".to_owned(),
        format!("--redis-url={}", args.stack.redis_url),
        format!("--redis-prefix={name}"),
        format!("--database-url={database_url}"),
        format!("--batch-size={}", args.batch),
        "--listen=127.0.0.1:0".to_owned(),
    ])?;
    let keys = config.redis.keys();
    let mut redis = teamchat_shared::config::redis_client(&args.stack.redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;

    // The backlog, as the append script writes it; then one worker drains it.
    let backlog = rows(args.events, "team");
    for chunk in backlog.chunks(10_000) {
        match args.reactions {
            false => append(&mut redis, &keys, chunk, args.cost).await?,
            true => append_reactions(&mut redis, &keys, chunk).await?,
        }
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(teamchat_worker::run(config.clone(), stop.clone()));
    while synced(&pool, "team").await < args.events as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_time = started.elapsed();
    if args.reactions {
        stop.cancel();
        worker.await??;
        pool.close().await;
        drop_database(&mut admin, &name).await?;
        crate::stack::clean_redis(&args.stack, &name).await?;
        let rate = args.events as f64 / worker_time.as_secs_f64();
        let report = Report::new()
            .with(
                "writer",
                "worker, reaction storm (Redis → PostgreSQL, counts, watermark)",
            )
            .with("rows", args.events)
            .with("batch", args.batch)
            .with("connections", config.write_concurrency)
            .with("rows/s", round(rate, 0))
            .with("% of best direct", "")
            .with("% of direct with credits", "");
        return Ok((vec![report], Vec::new()));
    }

    // The sync lag at a steady arrival rate, the same worker running.
    let lag = measure_lag(args, &mut redis, &keys, &pool).await?;
    stop.cancel();
    worker.await??;

    // PostgreSQL's own rate for the same rows, into empty copies of the tables, over as
    // many connections as the worker writes on (its batches go round-robin).
    let writers = config.write_concurrency as usize;
    let mut conns = Vec::new();
    for _ in 0..writers {
        conns.push(PgConnection::connect(&database_url).await?);
    }
    let chunks: Vec<&[Row]> = backlog.chunks(args.batch).collect();
    let mut direct = Vec::new();
    for method in [UNNEST, VALUES, COPY, WITH_CREDITS] {
        for ddl in [
            "DROP TABLE IF EXISTS direct, direct_ledger, direct_balances, direct_events",
            "CREATE TABLE direct (LIKE messages INCLUDING ALL)",
            "CREATE TABLE direct_ledger (LIKE credit_ledger INCLUDING ALL)",
            "CREATE TABLE direct_balances (LIKE credit_balances INCLUDING ALL)",
            // Unpartitioned: the same rows and key, without the partition routing.
            "CREATE TABLE direct_events (LIKE events INCLUDING ALL)",
        ] {
            sqlx::query(ddl).execute(&mut conns[0]).await?;
        }
        let started = Instant::now();
        let writes = conns.iter_mut().enumerate().map(|(i, conn)| {
            let mine = chunks.iter().skip(i).step_by(writers);
            async move {
                for chunk in mine {
                    let mut tx = conn.begin().await?;
                    match method {
                        UNNEST => unnest(&mut tx, chunk).await?,
                        VALUES => values(&mut tx, chunk).await?,
                        COPY => copy(&mut tx, chunk).await?,
                        _ => with_credits(&mut tx, chunk, args.cost).await?,
                    }
                    tx.commit().await?;
                }
                Ok::<(), sqlx::Error>(())
            }
        });
        futures_util::future::try_join_all(writes).await?;
        direct.push((method, started.elapsed()));
    }
    let rate = |took: Duration| args.events as f64 / took.as_secs_f64();
    // The issue's yardstick: the fastest way to store the messages alone.
    let best = direct
        .iter()
        .filter(|(method, _)| *method != WITH_CREDITS)
        .map(|(_, t)| rate(*t))
        .fold(0.0, f64::max);
    let same_rows = direct
        .iter()
        .find(|(method, _)| *method == WITH_CREDITS)
        .map(|(_, t)| rate(*t))
        .unwrap_or(f64::NAN);
    let mut rates = vec![(
        "worker (Redis → PostgreSQL, ledger, watermark)",
        worker_time,
    )];
    rates.extend(direct);
    let rates = rates
        .into_iter()
        .map(|(method, took)| {
            let report = Report::new()
                .with("writer", method)
                .with("rows", args.events)
                .with("batch", args.batch)
                .with("connections", writers)
                .with("rows/s", round(rate(took), 0))
                .with("% of best direct", round(100.0 * rate(took) / best, 1));
            if method.starts_with("worker") {
                report.with(
                    "% of direct with credits",
                    round(100.0 * rate(took) / same_rows, 1),
                )
            } else {
                report.with("% of direct with credits", "")
            }
        })
        .collect();

    drop(conns);
    pool.close().await;
    drop_database(&mut admin, &name).await?;
    crate::stack::clean_redis(&args.stack, &name).await?;
    Ok((rates, vec![lag]))
}

/// Drops the run's database. An autovacuum worker may still be on the fresh tables, and
/// this role may not end it: the drop is retried until the worker is done.
async fn drop_database(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut *admin)
        .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(_) if attempts < 120 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The same offsets as a reaction storm: a team's offset 1 is its message, every later
/// one adds (or, every other 8,000, takes back) a user's emoji on it.
async fn append_reactions(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    rows: &[Row],
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for row in rows {
        let (kind, data) = if row.offset == 1 {
            let data = serde_json::json!({"id": row.id, "client_id": row.client_id,
                "user": row.user, "body": row.body, "ts": row.ts});
            ("message", data)
        } else {
            let k = row.offset - 2;
            let kind = if (k / 8_000) % 2 == 0 {
                "react"
            } else {
                "unreact"
            };
            const EMOJIS: [&str; 8] = ["👍", "🎉", "👀", "❤️", "🚀", "😂", "🙏", "✅"];
            let emoji = EMOJIS[(k / 1_000 % 8) as usize];
            let data = serde_json::json!({"user": format!("user{}", k % 1_000),
                "emoji": emoji, "ts": row.ts});
            (kind, data)
        };
        pipe.cmd("XADD")
            .arg(keys.ingest(keys.shard_of(&row.team)))
            .arg("*")
            .arg(&[
                ("team", row.team.clone()),
                ("off", row.offset.to_string()),
                ("k", kind.to_owned()),
                ("seq", "1".to_owned()),
                ("c", "0".to_owned()),
                ("d", data.to_string()),
            ])
            .ignore();
    }
    pipe.query_async::<()>(redis).await?;
    Ok(())
}

/// Appends events to the ingest streams as the append script does.
async fn append(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    rows: &[Row],
    cost: u64,
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for row in rows {
        let data = row.data();
        pipe.cmd("XADD")
            .arg(keys.ingest(keys.shard_of(&row.team)))
            .arg("*")
            .arg(&[
                ("team", row.team.clone()),
                ("off", row.offset.to_string()),
                ("k", "message".to_owned()),
                ("seq", row.seq.to_string()),
                ("c", cost.to_string()),
                ("d", data),
            ])
            .ignore();
    }
    pipe.query_async::<()>(redis).await?;
    Ok(())
}

/// Events synced so far in teams named `<prefix><n>` (their watermarks are contiguous).
async fn synced(pool: &PgPool, prefix: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(synced_offset)::int8 FROM team_sync WHERE team LIKE $1 || '%'",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Offers `lag_rate` events/s in 10 ms ticks for `lag_seconds`; a tick's lag is the time
/// from its append until the watermarks cover as many events as had been appended by
/// then (teams are filled round-robin, so that is when the tick's events are stored,
/// to within the 10 ms the watermarks are polled at).
async fn measure_lag(
    args: &SyncArgs,
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    pool: &PgPool,
) -> anyhow::Result<Report> {
    let per_tick = (args.lag_rate / 100).max(1);
    let ticks = args.lag_seconds as usize * 100;
    let events = rows(per_tick * ticks, "lag");
    let (appended_tx, mut appended_rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut lag_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
            let mut pending: std::collections::VecDeque<(i64, Instant)> = Default::default();
            let mut done = false;
            while !(done && pending.is_empty()) {
                while let Ok(item) = appended_rx.try_recv() {
                    match item {
                        Some(tick) => pending.push_back(tick),
                        None => done = true,
                    }
                }
                let stored = synced(&pool, "lag").await;
                while let Some(&(count, at)) = pending.front() {
                    if stored < count {
                        break;
                    }
                    let _ = lag_us.record(at.elapsed().as_micros().max(1) as u64);
                    pending.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            lag_us
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for (n, chunk) in events.chunks(per_tick).enumerate() {
        tick.tick().await;
        let at = Instant::now();
        append(redis, keys, chunk, args.cost).await?;
        appended_tx.send(Some((((n + 1) * per_tick) as i64, at)))?;
    }
    appended_tx.send(None)?;
    let lag_us = poller.await?;
    let ms = |q: f64| round(lag_us.value_at_quantile(q) as f64 / 1000.0, 1);
    Ok(Report::new()
        .with("events/s", args.lag_rate)
        .with("seconds", args.lag_seconds)
        .with("lag p50 ms", ms(0.5))
        .with("lag p99 ms", ms(0.99))
        .with("lag max ms", ms(1.0)))
}

/// Binds the rows' message columns as $1..$8 (team, seq, id, client_id, user, body, ts,
/// offset), for the UNNEST inserts.
trait BindMessages {
    fn bind_messages(self, rows: &[Row]) -> Self;
}

impl<'q> BindMessages for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_messages(self, rows: &[Row]) -> Self {
        let col = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let int = |f: fn(&Row) -> i64| rows.iter().map(f).collect::<Vec<_>>();
        self.bind(col(|r| r.team.clone()))
            .bind(int(|r| r.seq))
            .bind(col(|r| r.id.clone()))
            .bind(col(|r| r.client_id.clone()))
            .bind(col(|r| r.user.clone()))
            .bind(col(|r| r.body.clone()))
            .bind(int(|r| r.ts))
            .bind(int(|r| r.offset))
    }
}

async fn unnest(conn: &mut PgConnection, rows: &[Row]) -> sqlx::Result<()> {
    sqlx::query(
        r#"INSERT INTO direct (team, seq, id, client_id, user_id, body, ts, "offset", version)
           SELECT t, s, i, c, u, b, ts, o, o FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                                  $6::text[], $7::int8[], $8::int8[]) AS x(t, s, i, c, u, b, ts, o)
           ON CONFLICT (team, seq) DO NOTHING"#,
    )
    .bind_messages(rows)
    .execute(conn)
    .await?;
    Ok(())
}

async fn values(conn: &mut PgConnection, rows: &[Row]) -> sqlx::Result<()> {
    let mut sql = String::from(
        r#"INSERT INTO direct (team, seq, id, client_id, user_id, body, ts, "offset", version) VALUES "#,
    );
    for i in 0..rows.len() {
        let p = i * 8;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${},${},${},${},${},${},${},${},${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 8
        ));
    }
    sql.push_str(" ON CONFLICT (team, seq) DO NOTHING");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in rows {
        query = query
            .bind(&r.team)
            .bind(r.seq)
            .bind(&r.id)
            .bind(&r.client_id)
            .bind(&r.user)
            .bind(&r.body)
            .bind(r.ts)
            .bind(r.offset);
    }
    query.execute(conn).await?;
    Ok(())
}

/// PostgreSQL's bulk load path straight into the table: no conflict handling, which the
/// fresh rows here do not need (the worker's writes must be idempotent, so it cannot).
/// Over TCP, sqlx's COPY stalls on Nagle + delayed ACK (it does not set TCP_NODELAY), so
/// this measures the client more than PostgreSQL.
async fn copy(conn: &mut PgConnection, rows: &[Row]) -> sqlx::Result<()> {
    let mut data = String::new();
    for r in rows {
        // Text format; the generated values hold no tabs, newlines or backslashes.
        data.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.team, r.seq, r.id, r.client_id, r.user, r.body, r.ts, r.offset, r.offset
        ));
    }
    let mut copy = conn
        .copy_in_raw(
            r#"COPY direct (team, seq, id, client_id, user_id, body, ts, "offset", version) FROM STDIN"#,
        )
        .await?;
    copy.send(data.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// The messages with a credit ledger row each, the users' balances and an archive row
/// each, in one statement as the worker writes them (its watermark bookkeeping aside).
async fn with_credits(conn: &mut PgConnection, rows: &[Row], cost: u64) -> sqlx::Result<()> {
    let charged = if cost > 0 { rows } else { &[] };
    sqlx::query(
        r#"WITH stored AS (
               INSERT INTO direct (team, seq, id, client_id, user_id, body, ts, "offset", version)
               SELECT t, s, i, c, u, b, ts, o, o FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                                      $6::text[], $7::int8[], $8::int8[]) AS x(t, s, i, c, u, b, ts, o)
               ON CONFLICT (team, seq) DO NOTHING),
           charged AS (
               INSERT INTO direct_ledger (team, "offset", user_id, kind, cost)
               SELECT t, o, u, 'message', $12 FROM UNNEST($9::text[], $10::int8[], $11::text[]) AS x(t, o, u)
               ON CONFLICT DO NOTHING
               RETURNING user_id, cost),
           archived AS (
               INSERT INTO direct_events (team, "offset", at, kind, seq, user_id, cost, data)
               SELECT t, o, to_timestamp(ts / 1000.0), 'message', s, u, $12, d::jsonb
               FROM UNNEST($1::text[], $8::int8[], $7::int8[], $2::int8[], $5::text[], $13::text[])
                    AS x(t, o, ts, s, u, d)
               ON CONFLICT DO NOTHING)
           INSERT INTO direct_balances (user_id, used)
           SELECT user_id, sum(cost) FROM charged GROUP BY user_id ORDER BY user_id
           ON CONFLICT (user_id) DO UPDATE SET used = direct_balances.used + EXCLUDED.used"#,
    )
    .bind_messages(rows)
    .bind(charged.iter().map(|r| r.team.clone()).collect::<Vec<_>>())
    .bind(charged.iter().map(|r| r.offset).collect::<Vec<_>>())
    .bind(charged.iter().map(|r| r.user.clone()).collect::<Vec<_>>())
    .bind(cost as i64)
    .bind(rows.iter().map(Row::data).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
