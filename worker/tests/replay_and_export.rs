//! Replay rebuilds the same rows the live sync wrote; export writes the stream as NDJSON.

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
    let stats = teamchat_worker::replay::replay(&config, None)
        .await
        .unwrap();
    assert_eq!((stats.teams, stats.events), (2, 76));
    let replayed = snapshot(&empty.pg().await).await;
    assert_eq!(replayed, live_rows);
    // Again, on top of itself: nothing changes.
    teamchat_worker::replay::replay(&config, Some("t1"))
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
    let written = teamchat_worker::replay::export(&config, "t", Some(2), Some(6), &mut out)
        .await
        .unwrap();
    assert_eq!(written, 5);
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
