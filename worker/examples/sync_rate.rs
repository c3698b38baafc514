//! The worker's sync rate beside PostgreSQL's own rate for the same rows, in one run.
//!
//! Fills the ingest streams with N new-message events over 100 teams, lets one worker
//! drain them, then writes the same rows straight into PostgreSQL three ways (UNNEST,
//! multi-row INSERT, COPY into a staging table + INSERT … SELECT), in batches of the same
//! size. Uses a fresh key prefix and database on the servers at REDIS_URL / DATABASE_URL.
//!
//! `cargo run --release -p teamchat-worker --example sync_rate -- [events] [batch] [cost]`
//! (cost 0 leaves the credit ledger out of the worker's writes)

use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::{Connection, PgConnection};
use teamchat_shared::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

const TEAMS: usize = 100;

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

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let (team, seq) = (i % TEAMS, (i / TEAMS) as i64 + 1);
            Row {
                team: format!("team{team}"),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(200_000, |a| a.parse().unwrap());
    let batch: usize = args.get(2).map_or(500, |a| a.parse().unwrap());
    let cost: String = args.get(3).cloned().unwrap_or_else(|| "1".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat".into());
    let name = format!("syncrate{}", std::process::id());
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let options: sqlx::postgres::PgConnectOptions = admin_url.parse()?;
    let database_url = sqlx::ConnectOptions::to_url_lossy(&options.database(&name)).to_string();
    let config = WorkerConfig::try_parse_from([
        "teamchat-worker".to_owned(),
        format!("--redis-url={redis_url}"),
        format!("--redis-prefix={name}"),
        format!("--database-url={database_url}"),
        format!("--batch-size={batch}"),
        "--listen=127.0.0.1:0".to_owned(),
    ])?;
    let keys = config.redis.keys();
    let rows = rows(n);

    // The backlog: N events in the ingest streams, as the append script writes them.
    let client = redis::Client::open(redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let filled = Instant::now();
    for chunk in rows.chunks(10_000) {
        let mut pipe = redis::pipe();
        for row in chunk {
            let data = serde_json::json!({"id": row.id, "client_id": row.client_id, "user": row.user, "body": row.body, "ts": row.ts});
            pipe.cmd("XADD")
                .arg(keys.ingest(keys.shard_of(&row.team)))
                .arg("*")
                .arg(&[
                    ("team", row.team.clone()),
                    ("off", row.offset.to_string()),
                    ("k", "message".to_owned()),
                    ("seq", row.seq.to_string()),
                    ("c", cost.clone()),
                    ("d", data.to_string()),
                ])
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
    }
    eprintln!("filled {n} events in {:?}", filled.elapsed());

    // The worker drains it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(teamchat_worker::run(config.clone(), stop.clone()));
    loop {
        let synced: Option<i64> =
            sqlx::query_scalar("SELECT sum(synced_offset)::int8 FROM team_sync")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        if synced.unwrap_or(0) as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_time = started.elapsed();
    stop.cancel();
    worker.await??;

    // PostgreSQL's own rate for the same rows, three ways, into empty copies of the table.
    let mut conn = PgConnection::connect(&database_url).await?;
    let mut results = vec![(
        "worker (Redis → PostgreSQL, with ledger and watermark)",
        worker_time,
    )];
    for method in ["unnest", "multi-row insert", "copy + insert select"] {
        sqlx::query("DROP TABLE IF EXISTS direct")
            .execute(&mut conn)
            .await?;
        sqlx::query("CREATE TABLE direct (LIKE messages INCLUDING ALL)")
            .execute(&mut conn)
            .await?;
        let started = Instant::now();
        for chunk in rows.chunks(batch) {
            let mut tx = conn.begin().await?;
            match method {
                "unnest" => unnest(&mut tx, chunk).await?,
                "multi-row insert" => values(&mut tx, chunk).await?,
                _ => copy(&mut tx, chunk).await?,
            }
            tx.commit().await?;
        }
        results.push((method, started.elapsed()));
    }
    println!("{n} rows, batches of {batch}, one connection each:");
    let base = results[1].1.as_secs_f64();
    for (method, took) in &results {
        println!(
            "  {method:<55} {:>9.0} rows/s  ({:.2} s, {:.0}% of UNNEST's rate)",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            100.0 * base / took.as_secs_f64()
        );
    }
    drop(conn);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    let _: () = redis::cmd("DEL")
        .arg(keys.all_ingest())
        .query_async(&mut redis)
        .await?;
    Ok(())
}

async fn unnest(conn: &mut PgConnection, rows: &[Row]) -> sqlx::Result<()> {
    let col = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let int = |f: fn(&Row) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        r#"INSERT INTO direct (team, seq, id, client_id, user_id, body, ts, "offset", version)
           SELECT t, s, i, c, u, b, ts, o, o FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                                  $6::text[], $7::int8[], $8::int8[]) AS x(t, s, i, c, u, b, ts, o)
           ON CONFLICT (team, seq) DO NOTHING"#,
    )
    .bind(col(|r| r.team.clone()))
    .bind(int(|r| r.seq))
    .bind(col(|r| r.id.clone()))
    .bind(col(|r| r.client_id.clone()))
    .bind(col(|r| r.user.clone()))
    .bind(col(|r| r.body.clone()))
    .bind(int(|r| r.ts))
    .bind(int(|r| r.offset))
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

async fn copy(conn: &mut PgConnection, rows: &[Row]) -> sqlx::Result<()> {
    sqlx::query(
        r#"CREATE TEMP TABLE IF NOT EXISTS staging (team text, seq int8, id text, client_id text, user_id text,
                                                    body text, ts int8, "offset" int8) ON COMMIT DELETE ROWS"#,
    )
    .execute(&mut *conn)
    .await?;
    let mut data = String::new();
    for r in rows {
        // Text format; the generated values hold no tabs, newlines or backslashes.
        data.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.team, r.seq, r.id, r.client_id, r.user, r.body, r.ts, r.offset
        ));
    }
    let mut copy = conn.copy_in_raw("COPY staging FROM STDIN").await?;
    copy.send(data.into_bytes()).await?;
    copy.finish().await?;
    sqlx::query(
        r#"INSERT INTO direct (team, seq, id, client_id, user_id, body, ts, "offset", version)
           SELECT team, seq, id, client_id, user_id, body, ts, "offset", "offset" FROM staging
           ON CONFLICT (team, seq) DO NOTHING"#,
    )
    .execute(conn)
    .await?;
    Ok(())
}
