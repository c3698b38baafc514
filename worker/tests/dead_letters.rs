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
    eventually(
        Duration::from_secs(20),
        "the watermark past the dead letter",
        || async {
            let w: Option<i64> =
                sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = 't'")
                    .fetch_optional(&pg)
                    .await
                    .ok()?;
            (w == Some(3)).then_some(())
        },
    )
    .await;
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
