//! An ingest entry that cannot be decoded goes to `dead_letters` with its reason, its
//! neighbours sync, and the team's sync watermark moves past it.

use std::time::Duration;

use redis::AsyncCommands;
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_is_dead_lettered_and_its_neighbours_sync() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let token = env.token("u1", &["t"]);
    let mut client = Client::connect(gateway.addr(), &token).await;
    client.join("t").await;
    client.send_message("t", "before", "b").await; // offset 1
    drop(client);

    // A corrupt entry takes offset 2.
    let keys = env.keys();
    let mut redis = env.redis().await;
    let _: i64 = redis.hincr(keys.team_meta("t"), "offset", 1).await.unwrap();
    let _: String = redis
        .xadd(
            keys.ingest(keys.shard_of("t")),
            "*",
            &[
                ("team", "t"),
                ("off", "2"),
                ("k", "message"),
                ("seq", "2"),
                ("d", "{not json"),
            ],
        )
        .await
        .unwrap();

    let mut client = Client::connect(gateway.addr(), &token).await;
    client.join("t").await;
    let after = client.send_message("t", "after", "b").await;
    assert_eq!(after["offset"], "3");

    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 3).await;
    let synced: Vec<String> = sqlx::query_scalar("SELECT client_id FROM messages ORDER BY seq")
        .fetch_all(&pg)
        .await
        .unwrap();
    assert_eq!(synced, ["before", "after"]);
    let (error, fields): (String, serde_json::Value) =
        sqlx::query_as("SELECT error, fields FROM dead_letters")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert!(error.contains("data"), "{error}");
    assert_eq!(fields["off"], "2");
    stop.cancel();
}

fn message(id: &str, body: &str) -> String {
    serde_json::json!({"id": id, "client_id": id, "user": "u1", "body": body, "ts": 1}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_postgresql_refuses_is_dead_lettered_and_its_batch_lands() {
    let env = TestEnv::new().await;
    env.inject_ingest("t", &message("a", "fine")).await;
    env.inject_ingest("t", &message("b", "nul \u{0} inside"))
        .await; // text cannot hold NUL
    let last = env.inject_ingest("t", &message("c", "fine too")).await;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", last as i64).await;
    let synced: Vec<String> = sqlx::query_scalar("SELECT client_id FROM messages ORDER BY seq")
        .fetch_all(&pg)
        .await
        .unwrap();
    assert_eq!(synced, ["a", "c"]);
    let error: String = sqlx::query_scalar("SELECT error FROM dead_letters")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert!(
        error.contains("0x00") || error.contains("invalid byte"),
        "{error}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_too_often_is_dead_lettered() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config("w1");
    config.max_deliveries = 5;
    let offset = env
        .inject_ingest("t", &message("a", "fine, but the worker kept dying on it"))
        .await;
    let stream = env.keys().ingest(env.keys().shard_of("t"));
    let mut redis = env.redis().await;
    // Deliver it to w1 and set its count to five, as crashes would have; the worker's own
    // re-read of its pending entries is the sixth delivery.
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("sync")
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default().group("sync", "w1"),
        )
        .await
        .unwrap();
    let id = read.keys[0].ids[0].id.clone();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg("sync")
        .arg("w1")
        .arg(0)
        .arg(&id)
        .arg("RETRYCOUNT")
        .arg(5)
        .query_async(&mut redis)
        .await
        .unwrap();

    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", offset as i64).await;
    let error: String = sqlx::query_scalar("SELECT error FROM dead_letters")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert!(error.contains("delivered 6 times"), "{error}");
    let dead_stream = format!("{}:dead", stream.trim_end_matches(":ingest"));
    // Published when the batch is acknowledged, just after the watermark moved.
    let dead = eventually(
        Duration::from_secs(10),
        "the dead letter on its stream",
        || {
            let (mut conn, dead_stream) = (redis.clone(), dead_stream.clone());
            async move {
                let dead: redis::streams::StreamRangeReply =
                    conn.xrange_all(dead_stream).await.ok()?;
                (!dead.ids.is_empty()).then_some(dead)
            }
        },
    )
    .await;
    assert_eq!(dead.ids.len(), 1, "the dead-letter stream has it once");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_stream_is_trimmed_behind_the_group() {
    let env = TestEnv::new().await;
    let mut last = 0;
    for n in 0..1_000 {
        last = env
            .inject_ingest("t", &message(&format!("m{n}"), "b"))
            .await;
    }
    let stream = env.keys().ingest(env.keys().shard_of("t"));
    let mut redis = env.redis().await;
    assert_eq!(redis.xlen::<_, u64>(&stream).await.unwrap(), 1_000);
    let mut config = env.worker_config("w1");
    config.trim_every_ms = 10;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", last as i64).await;
    // Trimming is approximate (whole stream nodes of ~100 entries): most of it must go.
    eventually(Duration::from_secs(20), "the stream trimmed", || {
        let (mut redis, stream) = (redis.clone(), stream.clone());
        async move { (redis.xlen::<_, u64>(&stream).await.ok()? < 200).then_some(()) }
    })
    .await;
    stop.cancel();
}
