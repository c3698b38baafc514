//! The workers trim the team streams to `STREAM_MAXLEN` and `STREAM_RETENTION`, never
//! below what they synced: a stopped worker leaves the unsynced tail in the stream, and
//! export still reaches every event through the archive.

use std::time::Duration;

use teamchat_gateway::Gateway;
use teamchat_shared::redis_conn::Redis;
use teamchat_testkit::{Client, TestEnv, eventually, wait_for_watermark};
use tokio_util::sync::CancellationToken;

/// The team stream's length and first offset.
async fn held(redis: &mut Redis, stream: &str) -> (u64, Option<u64>) {
    let len: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(redis)
        .await
        .unwrap();
    let first: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await
        .unwrap();
    let first = first
        .ids
        .first()
        .and_then(|e| e.id.split('-').next()?.parse().ok());
    (len, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_behind_the_sync_and_never_ahead_of_it() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    for n in 1..=40 {
        ann.send_message("t", &format!("a{n}"), "m").await;
    }
    let keys = env.keys();
    let stream = keys.team_events("t");
    let mut redis = env.redis().await;
    let pg = env.pg().await;

    // A worker keeping 10 events per stream, trimming every 100 ms.
    let mut config = env.worker_config("w1");
    config.stream_maxlen = 10;
    config.stream_trim_every_ms = 100;
    let start = |config: teamchat_shared::config::WorkerConfig| {
        let stop = CancellationToken::new();
        let task = tokio::spawn(teamchat_worker::run(config, stop.clone()));
        (stop, task)
    };
    let (stop, task) = start(config.clone());
    wait_for_watermark(&pg, "t", 40).await;
    eventually(Duration::from_secs(10), "the stream trimmed", || async {
        let held = held(&mut env.redis().await, &stream).await;
        (held == (10, Some(31))).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // The worker is down: 30 more events arrive and a trim round keeps all of them.
    for n in 41..=70 {
        ann.send_message("t", &format!("a{n}"), "m").await;
    }
    let trimmed = teamchat_worker::retention::trim(&pg, &redis, &keys, 10, None)
        .await
        .unwrap();
    assert_eq!(trimmed, Some(1));
    assert_eq!(held(&mut redis, &stream).await, (30, Some(41)));

    // Back up: synced, then trimmed to the newest 10 again.
    let (stop, task) = start(config.clone());
    wait_for_watermark(&pg, "t", 70).await;
    eventually(Duration::from_secs(10), "the stream trimmed", || async {
        let held = held(&mut env.redis().await, &stream).await;
        (held == (10, Some(61))).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // By time: nothing is an hour old yet; everything synced is older than no time at all.
    let retention = |secs| Some(Duration::from_secs(secs));
    teamchat_worker::retention::trim(&pg, &redis, &keys, 10, retention(3_600))
        .await
        .unwrap();
    assert_eq!(held(&mut redis, &stream).await, (10, Some(61)));
    teamchat_worker::retention::trim(&pg, &redis, &keys, 10, retention(0))
        .await
        .unwrap();
    assert_eq!(held(&mut redis, &stream).await, (0, None));

    // Every event is still exported, from the archive.
    let mut out = Vec::new();
    let exported = teamchat_worker::replay::export(&config, "t", &span(None, None), &mut out)
        .await
        .unwrap();
    assert_eq!((exported.events, exported.missing.len()), (70, 0));

    // And the team goes on after the emptied stream.
    let ack = ann.send_message("t", "a71", "m").await;
    assert_eq!(ack["offset"], "71");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_months_past_the_retention_are_dropped_and_not_written() {
    let env = TestEnv::new().await;
    // An event from 2020 (a replayed backlog, say) and one from now.
    let old = env
        .inject_ingest(
            "t",
            r#"{"id":"old","client_id":"c1","user":"ann","body":"2020","ts":1577923200000}"#,
        )
        .await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    ann.send_message("t", "c2", "now").await;

    let mut config = env.worker_config("w1");
    config.archive_retention = Some(Duration::from_secs(365 * 86_400));
    config.stream_trim_every_ms = 100;
    let stop = CancellationToken::new();
    let task = tokio::spawn(teamchat_worker::run(config, stop.clone()));
    let pg = env.pg().await;
    wait_for_watermark(&pg, "t", 2).await;

    // Both are stored; only the recent one is archived, and no 2020 partition was made.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE team = 't'")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(stored, 2);
    let archived: Vec<i64> =
        sqlx::query_scalar(r#"SELECT "offset" FROM events WHERE team = 't' ORDER BY 1"#)
            .fetch_all(&pg)
            .await
            .unwrap();
    assert_eq!(archived, [old as i64 + 1]);
    let partitions = || async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events'::regclass ORDER BY 1",
        )
        .fetch_all(&pg)
        .await
        .unwrap();
        names
    };
    let recent = partitions().await;
    assert_eq!(recent.len(), 2, "this month and the next: {recent:?}");

    // A month archived before the retention was set goes in the next round.
    sqlx::query("SELECT events_partition_for('2020-01-02T00:00:00Z')")
        .execute(&pg)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO events (team, "offset", at, kind, seq, user_id, cost, data)
           VALUES ('t', 1, '2020-01-02T00:00:00Z', 'message', 1, 'ann', 0, '{}')"#,
    )
    .execute(&pg)
    .await
    .unwrap();
    assert!(partitions().await.contains(&"events_2020_01".to_owned()));
    eventually(
        Duration::from_secs(10),
        "the 2020 month dropped",
        || async { (partitions().await == recent).then_some(()) },
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// An export of the offsets `from..=to`, as NDJSON.
fn span(from: Option<u64>, to: Option<u64>) -> teamchat_worker::replay::ExportSpec {
    teamchat_worker::replay::ExportSpec {
        from,
        to,
        ..Default::default()
    }
}
