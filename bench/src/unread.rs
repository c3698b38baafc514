//! Unread counts: the time of `GET /v1/me/unread` for a user in several teams as their
//! history grows (messages written straight into PostgreSQL, as the workers would have
//! synced them), with the user 1,000 messages behind in each team and, beside it, never
//! having read at all. The endpoint's cost must stay flat as history grows.

use std::time::Instant;

use clap::Args;
use hdrhistogram::Histogram;
use sqlx::PgPool;

use crate::client;
use crate::report::{Row, round};
use crate::stack::{self, StackArgs};

#[derive(Args, Clone, Debug)]
pub struct UnreadArgs {
    /// Teams the reader's token holds.
    #[arg(long, default_value_t = 10)]
    pub teams: usize,
    /// History sizes per team to measure at, ascending (each adds to the one before).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub messages: Vec<i64>,
    /// Requests timed at each size and read position.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// How far behind the newest message the reader is in the "behind" case.
const BEHIND: i64 = 1_000;
const READER: &str = "reader";

pub async fn run(args: &UnreadArgs) -> anyhow::Result<Vec<Row>> {
    let (gateways, prefix) = stack::start_gateways(&args.stack, 1).await?;
    let gateway = gateways[0].addr;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.stack.database_url)
        .await?;
    let teams: Vec<String> = (0..args.teams).map(|t| format!("{prefix}u{t}")).collect();
    let team_refs: Vec<&str> = teams.iter().map(String::as_str).collect();
    let token = client::token(READER, &team_refs);

    let mut rows = Vec::new();
    let mut seeded = 0;
    for &size in &args.messages {
        let started = Instant::now();
        seed(&db, &teams, seeded + 1, size).await?;
        seeded = size;
        eprintln!(
            "unread: {} teams × {size} messages in place ({:.1} s)",
            args.teams,
            started.elapsed().as_secs_f64()
        );
        for (position, read) in [("1,000 behind", size - BEHIND), ("never read", 0)] {
            set_read(&db, &teams, read.max(0)).await?;
            let (ms, answer) = time_requests(gateway, &token, args.requests).await?;
            let first = &answer["teams"][0];
            rows.push(
                Row::new()
                    .with("teams", args.teams)
                    .with("messages per team", size)
                    .with("read position", position)
                    .with("unread (first team)", first["unread"].clone())
                    .with("mentions (first team)", first["mentions"].clone())
                    .with(
                        "p50 ms",
                        round(ms.value_at_quantile(0.5) as f64 / 1000.0, 2),
                    )
                    .with(
                        "p99 ms",
                        round(ms.value_at_quantile(0.99) as f64 / 1000.0, 2),
                    ),
            );
        }
    }
    sqlx::query("DELETE FROM messages WHERE team LIKE $1 || '%'")
        .bind(&prefix)
        .execute(&db)
        .await?;
    for table in ["unread_counts", "receipts"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE team LIKE $1 || '%'"
        )))
        .bind(&prefix)
        .execute(&db)
        .await?;
    }
    drop(gateways);
    stack::clean_redis(&args.stack, &prefix).await?;
    Ok(rows)
}

/// Messages `from..=to` of every team: one in 20 by the reader, one in 50 mentioning the
/// reader, one in 100 deleted (the mix the counts must subtract).
async fn seed(db: &PgPool, teams: &[String], from: i64, to: i64) -> anyhow::Result<()> {
    for team in teams {
        // A team per statement, in steps: a transaction of a few seconds at most.
        let mut start = from;
        while start <= to {
            let end = (start + 250_000 - 1).min(to);
            sqlx::query(
                r#"INSERT INTO messages (team, seq, id, client_id, user_id, body, ts, "offset",
                                         version, deleted, mentions)
                   SELECT $1, s, 'id' || s, 'c' || s,
                          CASE WHEN s % 20 = 0 THEN $4 ELSE 'user' || (s % 97) END,
                          CASE WHEN s % 100 = 0 THEN '' ELSE 'message number ' || s END,
                          1795000000000 + s, s, s, s % 100 = 0,
                          CASE WHEN s % 50 = 0 THEN ARRAY[$4] END
                   FROM generate_series($2::int8, $3::int8) AS s"#,
            )
            .bind(team)
            .bind(start)
            .bind(end)
            .bind(READER)
            .execute(db)
            .await?;
            // The counts the worker keeps as it stores messages (as migration 0008 fills
            // them for messages already there).
            sqlx::query(
                r#"INSERT INTO unread_counts AS u (team, kind, user_id, level, bucket, n)
                   SELECT c.team, c.kind, c.user_id, l.level, c.seq >> (8 * (l.level + 1)), count(*)
                   FROM (
                       SELECT team, 'd'::"char" AS kind, '' AS user_id, seq FROM messages
                       WHERE team = $1 AND seq BETWEEN $2 AND $3 AND deleted
                       UNION ALL
                       SELECT team, 'm'::"char", user_id, seq FROM messages
                       WHERE team = $1 AND seq BETWEEN $2 AND $3 AND NOT deleted
                       UNION ALL
                       SELECT m.team, '@'::"char", mn.user_id, m.seq
                       FROM messages m CROSS JOIN LATERAL unnest(m.mentions) AS mn(user_id)
                       WHERE m.team = $1 AND m.seq BETWEEN $2 AND $3 AND NOT m.deleted
                         AND mn.user_id <> m.user_id) c
                   CROSS JOIN (VALUES (0::int2), (1::int2)) AS l(level)
                   GROUP BY 1, 2, 3, 4, 5
                   ON CONFLICT (team, kind, user_id, level, bucket) DO UPDATE SET n = u.n + EXCLUDED.n"#,
            )
            .bind(team)
            .bind(start)
            .bind(end)
            .execute(db)
            .await?;
            start = end + 1;
        }
    }
    sqlx::query("ANALYZE messages").execute(db).await?;
    sqlx::query("ANALYZE unread_counts").execute(db).await?;
    Ok(())
}

/// The reader's receipt in every team (none for 0).
async fn set_read(db: &PgPool, teams: &[String], seq: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM receipts WHERE team = ANY($1) AND user_id = $2")
        .bind(teams)
        .bind(READER)
        .execute(db)
        .await?;
    if seq > 0 {
        sqlx::query(
            r#"INSERT INTO receipts (team, user_id, seq, "offset")
               SELECT t, $2, $3, $3 FROM UNNEST($1::text[]) AS t"#,
        )
        .bind(teams)
        .bind(READER)
        .bind(seq)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// `requests` sequential requests (after a few to warm up); their times in µs and the last
/// answer.
async fn time_requests(
    gateway: std::net::SocketAddr,
    token: &str,
    requests: usize,
) -> anyhow::Result<(Histogram<u64>, serde_json::Value)> {
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut answer = serde_json::Value::Null;
    for n in 0..requests + 5 {
        let started = Instant::now();
        let (status, body) = teamchat_testkit::http_get(gateway, "/v1/me/unread", &headers).await;
        let took = started.elapsed().as_micros() as u64;
        anyhow::ensure!(status == 200, "unread answered {status}: {body}");
        if n >= 5 {
            times.record(took.max(1))?;
        }
        answer = body;
    }
    Ok((times, answer))
}
