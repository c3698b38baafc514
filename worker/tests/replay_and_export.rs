//! Replay rebuilds the same rows the live sync wrote; export writes a team's history as
//! NDJSON; both reach past what the stream still holds through the event archive.

use std::time::Duration;

use serde_json::{Value, json};
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

/// team, seq, id, client_id, body, edited_at, deleted, offset
type MessageRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    bool,
    Option<i64>,
);

/// The messages, receipts and the chat model's aggregates (threads, pins, reactions,
/// unread counts), each as JSON rows.
async fn snapshot(pg: &sqlx::PgPool) -> (Vec<Value>, Vec<(String, String, i64)>, Vec<Value>) {
    let messages: Vec<MessageRow> =
        sqlx::query_as(
            r#"SELECT team, seq, id, client_id, body, edited_at, deleted, "offset" FROM messages ORDER BY team, seq"#,
        )
        .fetch_all(pg)
        .await
        .unwrap();
    let receipts = sqlx::query_as("SELECT team, user_id, seq FROM receipts ORDER BY team, user_id")
        .fetch_all(pg)
        .await
        .unwrap();
    let mut chat = Vec::new();
    for query in [
        "SELECT json_build_array(team, parent, reply_count, last_reply_ts) FROM threads ORDER BY team, parent",
        "SELECT json_build_array(team, seq, pinned_at) FROM messages WHERE pinned ORDER BY team, seq",
        "SELECT json_build_array(team, seq, emoji, count, first_offset) FROM reaction_counts ORDER BY team, seq, emoji",
        "SELECT json_build_array(team, kind, user_id, level, bucket, n) FROM unread_counts
         WHERE n <> 0 ORDER BY team, kind, user_id, level, bucket",
    ] {
        let rows: Vec<Value> = sqlx::query_scalar(query).fetch_all(pg).await.unwrap();
        assert!(!rows.is_empty(), "{query}");
        chat.extend(rows);
    }
    (
        messages
            .into_iter()
            .map(|m| json!([m.0, m.1, m.2, m.3, m.4, m.5, m.6, m.7]))
            .collect(),
        receipts,
        chat,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_an_empty_database_reproduces_the_live_rows() {
    let live = TestEnv::new().await;
    let gateway = Gateway::start(live.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &live.token("ann", &["t1", "t2"])).await;
    let mut ben = Client::connect(gateway.addr(), &live.token("ben", &["t1", "t2"])).await;
    for team in ["t1", "t2"] {
        ann.join(team).await;
        ben.join(team).await;
    }
    for team in ["t1", "t2"] {
        for n in 0..30 {
            ann.send_message(team, &format!("{team}-{n}"), &format!("body {n}"))
                .await;
        }
        ann.send(json!({"type":"message:edit","team":team,"seq":3,"body":"edited"}))
            .await;
        ann.expect("message:ack").await;
        ann.send(json!({"type":"message:delete","team":team,"seq":4}))
            .await;
        ann.expect("message:ack").await;
        // The chat model: a reply that mentions, a pin, reactions added and removed.
        for frame in [
            json!({"type":"message:send","team":team,"client_id":"reply","body":"r",
                   "parent":1,"mentions":["ben"]}),
            json!({"type":"message:pin","team":team,"seq":1}),
            json!({"type":"reaction:add","team":team,"seq":2,"emoji":"👍"}),
            json!({"type":"reaction:add","team":team,"seq":2,"emoji":"🎉"}),
            json!({"type":"reaction:remove","team":team,"seq":2,"emoji":"👍"}),
        ] {
            ann.send(frame).await;
            ann.expect("message:ack").await;
        }
    }
    for team in ["t1", "t2"] {
        ben.send(json!({"type":"receipt:update","team":team,"seq":20}))
            .await;
    }
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(live.worker_config("w1"), stop.clone()));
    let pg = live.pg().await;
    eventually(Duration::from_secs(30), "both teams synced", || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM team_sync WHERE synced_offset = 38")
                .fetch_one(&pg)
                .await
                .ok()?;
        (done == 2).then_some(())
    })
    .await;
    stop.cancel();
    let live_rows = snapshot(&pg).await;
    assert_eq!(live_rows.0.len(), 62);
    assert_eq!(live_rows.1.len(), 2);

    // The same streams, replayed into a fresh database.
    let empty = TestEnv::new().await;
    let mut config = live.worker_config("replayer");
    config.database_url = empty.database_url.clone();
    let stats = teamchat_worker::replay::replay(&config, None, None)
        .await
        .unwrap();
    assert_eq!((stats.teams, stats.events), (2, 76));
    let replayed = snapshot(&empty.pg().await).await;
    assert_eq!(replayed, live_rows);
    // Again, on top of itself: nothing changes.
    teamchat_worker::replay::replay(&config, Some("t1"), None)
        .await
        .unwrap();
    assert_eq!(snapshot(&empty.pg().await).await, live_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_a_range_of_the_stream_as_ndjson() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    for n in 0..5 {
        ann.send_message("t", &format!("c{n}"), &format!("body {n}"))
            .await;
    }
    ann.send(json!({"type":"message:edit","team":"t","seq":2,"body":"edited"}))
        .await;
    ann.expect("message:ack").await;

    let mut out = Vec::new();
    let config = env.worker_config("exporter");
    let exported = teamchat_worker::replay::export(&config, "t", &span(Some(2), Some(6)), &mut out)
        .await
        .unwrap();
    assert_eq!((exported.events, exported.missing.len()), (5, 0));
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets: Vec<&str> = lines
        .iter()
        .map(|l| l["offset"].as_str().unwrap())
        .collect();
    assert_eq!(offsets, ["2", "3", "4", "5", "6"]);
    assert_eq!(lines[0]["kind"], "message");
    assert_eq!(lines[0]["data"]["body"], "body 1");
    assert_eq!(
        (lines[4]["kind"].as_str(), lines[4]["seq"].as_u64()),
        (Some("edit"), Some(2))
    );
    assert_eq!(lines[4]["data"]["body"], "edited");

    // The binary writes the same to stdout, and nothing else.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
        .args(env.worker_args("exporter"))
        .args(["export", "--team", "t"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 6);
    assert!(
        stdout
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
}

/// The credit ledger and each user's balance.
async fn credits(pg: &sqlx::PgPool) -> Vec<Value> {
    sqlx::query_scalar(
        r#"SELECT jsonb_build_array(team, "offset", user_id, kind, cost) FROM credit_ledger
           UNION ALL SELECT jsonb_build_array(user_id, used) FROM credit_balances ORDER BY 1"#,
    )
    .fetch_all(pg)
    .await
    .unwrap()
}

/// The team's history as export writes it: (offset, kind, seq, data).
fn lines(out: Vec<u8>) -> Vec<(u64, String, u64, Value)> {
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let l: Value = serde_json::from_str(l).unwrap();
            (
                l["offset"].as_str().unwrap().parse().unwrap(),
                l["kind"].as_str().unwrap().to_owned(),
                l["seq"].as_u64().unwrap(),
                l["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_replay_reach_past_a_trimmed_stream_through_the_archive() {
    let live = TestEnv::new().await;
    let gateway = Gateway::start(live.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &live.token("ann", &["t"])).await;
    let mut ben = Client::connect(gateway.addr(), &live.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    for n in 0..30 {
        ann.send_message("t", &format!("c{n}"), &format!("body {n}"))
            .await;
    }
    for frame in [
        json!({"type":"message:edit","team":"t","seq":3,"body":"edited"}),
        json!({"type":"message:delete","team":"t","seq":4}),
        json!({"type":"reaction:add","team":"t","seq":2,"emoji":"👍"}),
        json!({"type":"message:send","team":"t","client_id":"reply","body":"r",
               "parent":1,"mentions":["ben"]}),
        json!({"type":"message:pin","team":"t","seq":1}),
    ] {
        ann.send(frame).await;
        ann.expect("message:ack").await;
    }
    ben.send(json!({"type":"receipt:update","team":"t","seq":20}))
        .await;
    let top = 36;

    // The live path: a worker syncs everything, then the stream is trimmed to its last 10.
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(live.worker_config("w1"), stop.clone()));
    let pg = live.pg().await;
    eventually(Duration::from_secs(30), "the team synced", || async {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = 't'")
                .fetch_optional(&pg)
                .await
                .ok()?;
        (done == Some(top)).then_some(())
    })
    .await;
    stop.cancel();
    let mut redis = live.redis().await;
    let stream = live.keys().team_events("t");
    let full = {
        let mut out = Vec::new();
        let config = live.worker_config("exporter");
        teamchat_worker::replay::export(&config, "t", &span(None, None), &mut out)
            .await
            .unwrap();
        lines(out)
    };
    assert_eq!(full.len(), top as usize);
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg("26")
        .query_async(&mut redis)
        .await
        .unwrap();
    // And a hole in what it still holds (as an erasure would leave).
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg("30-0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let held: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(held, 10);

    // Export from offset 1: every event once, in order, the same as before the trim.
    let config = live.worker_config("exporter");
    let mut out = Vec::new();
    let exported = teamchat_worker::replay::export(&config, "t", &span(Some(1), None), &mut out)
        .await
        .unwrap();
    assert_eq!(exported.missing, vec![]);
    let joined = lines(out);
    let offsets: Vec<u64> = joined.iter().map(|l| l.0).collect();
    assert_eq!(offsets, (1..=top as u64).collect::<Vec<_>>());
    assert_eq!(joined, full, "archive and stream joined, as the stream was");
    assert_eq!(
        (joined[2].1.as_str(), joined[2].3["body"].as_str()),
        ("message", Some("body 2"))
    );
    assert_eq!((joined[30].1.as_str(), joined[30].2), ("edit", 3));

    // Replay into an empty database, reading the live database's archive: the same
    // messages, receipts, chat aggregates and credits as the live path wrote.
    let empty = TestEnv::new().await;
    let mut into_empty = live.worker_config("replayer");
    into_empty.database_url = empty.database_url.clone();
    let stats = teamchat_worker::replay::replay(&into_empty, Some("t"), Some(&live.database_url))
        .await
        .unwrap();
    assert_eq!((stats.events, stats.missing.len()), (top as usize, 0));
    let replayed = empty.pg().await;
    assert_eq!(snapshot(&replayed).await, snapshot(&pg).await);
    let live_credits = credits(&pg).await;
    assert!(!live_credits.is_empty());
    assert_eq!(credits(&replayed).await, live_credits);

    // What neither holds is reported, not skipped in silence.
    sqlx::query(r#"DELETE FROM events WHERE team = 't' AND "offset" BETWEEN 5 AND 7"#)
        .execute(&pg)
        .await
        .unwrap();
    let mut out = Vec::new();
    let exported =
        teamchat_worker::replay::export(&config, "t", &span(Some(1), Some(12)), &mut out)
            .await
            .unwrap();
    assert_eq!(exported.missing, vec![5..=7]);
    let offsets: Vec<u64> = lines(out).iter().map(|l| l.0).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 8, 9, 10, 11, 12]);
}

/// An export of the offsets `from..=to`, as NDJSON.
fn span(from: Option<u64>, to: Option<u64>) -> teamchat_worker::replay::ExportSpec {
    teamchat_worker::replay::ExportSpec {
        from,
        to,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_narrows_to_a_time_window_and_writes_flat_rows() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    ann.send_message("t", "c1", "before").await;
    let last_before = ann.send_message("t", "c2", "also before").await["ts"]
        .as_i64()
        .unwrap();
    // The window opens on the next millisecond after the last event before it.
    let since = loop {
        let now = std::time::SystemTime::now();
        if now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            > last_before
        {
            break now;
        }
        tokio::task::yield_now().await;
    };
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"after"}))
        .await;
    ann.expect("message:ack").await;
    ann.send(json!({"type":"reaction:add","team":"t","seq":2,"emoji":"🎉"}))
        .await;
    ann.expect("message:ack").await;
    ann.send(
        json!({"type":"message:send","team":"t","client_id":"c3","body":"reply",
                    "parent":1,"mentions":["ben"],"meta":{"k":"v"}}),
    )
    .await;
    ann.expect("message:ack").await;

    // Synced, and the stream emptied: the window is found and read in the archive.
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", 5).await;
    stop.cancel();
    let mut redis = env.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(env.keys().team_events("t"))
        .query_async(&mut redis)
        .await
        .unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
        .args(env.worker_args("exporter"))
        .args(["export", "--team", "t", "--format", "flat", "--since"])
        .arg(humantime::format_rfc3339_millis(since).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("edit", 3), ("react", 4), ("message", 5)]);
    // Every row has every column; what a kind lacks is null.
    let columns = |row: &Value| {
        let mut keys: Vec<String> = row.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert!(rows.iter().all(|r| columns(r) == columns(&rows[0])));
    assert_eq!(
        (rows[0]["seq"].as_u64(), rows[0]["body"].as_str()),
        (Some(1), Some("after"))
    );
    assert!(rows[0]["emoji"].is_null() && rows[0]["id"].is_null());
    assert_eq!(rows[1]["emoji"], "🎉");
    assert!(rows[1]["body"].is_null());
    let reply = &rows[2];
    assert_eq!(
        (
            reply["body"].as_str(),
            reply["parent"].as_u64(),
            reply["user"].as_str()
        ),
        (Some("reply"), Some(1), Some("ann"))
    );
    assert_eq!(
        (reply["mentions"].clone(), reply["meta"].clone()),
        (json!(["ben"]), json!({"k":"v"}))
    );
    assert_eq!(reply["cost"], 1);
    assert!(reply["at"].as_str().unwrap().ends_with('Z'));
    assert!(reply["ts"].as_i64().unwrap() >= rows[0]["ts"].as_i64().unwrap());

    // A window that ends before the edit: the two messages alone.
    let mut out = Vec::new();
    let spec = teamchat_worker::replay::ExportSpec {
        until: Some(since - Duration::from_millis(1)),
        ..Default::default()
    };
    let config = env.worker_config("exporter");
    let exported = teamchat_worker::replay::export(&config, "t", &spec, &mut out)
        .await
        .unwrap();
    assert_eq!(exported.events, 2);
}
