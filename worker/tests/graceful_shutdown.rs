//! SIGTERM: the worker commits and acks the batch in hand, then exits; it leaves nothing
//! pending behind.

use std::process::Stdio;
use std::time::Duration;

use redis::AsyncCommands;
use teamchat_testkit::{TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_and_exits_cleanly() {
    let env = TestEnv::new().await;
    let keys = env.keys();
    let mut redis = env.redis().await;
    let stream = keys.ingest(keys.shard_of("t"));
    for n in 1..=20_000u64 {
        let data = serde_json::json!({"id": format!("i{n}"), "client_id": format!("c{n}"), "user": "u", "body": "b", "ts": 1});
        let _: String = redis
            .xadd(
                &stream,
                "*",
                &[
                    ("team", "t".to_owned()),
                    ("off", n.to_string()),
                    ("k", "message".into()),
                    ("seq", n.to_string()),
                    ("d", data.to_string()),
                ],
            )
            .await
            .unwrap();
    }
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
        .args(env.worker_args("w1"))
        .arg("--batch-size=200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pg = env.pg().await;
    eventually(Duration::from_secs(30), "the worker under way", || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&pg)
            .await
            .ok()?;
        (rows > 0).then_some(())
    })
    .await;
    let pid = worker.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("it exits")
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Everything it read was committed and acked: no entry is left pending on it, and the
    // rows in PostgreSQL are exactly the acked entries.
    let pending: redis::streams::StreamPendingReply =
        redis.xpending(&stream, "sync").await.unwrap();
    assert_eq!(pending.count(), 0, "entries left pending");
    let groups: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(&stream).await.unwrap();
    let unread = groups.groups[0].lag.unwrap_or(0) as i64;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(rows + unread, 20_000);
    println!("stopped after {rows} rows");
}
