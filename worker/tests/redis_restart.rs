//! The worker rides out a Redis crash and restart (AOF on): it reconnects, picks up what
//! it had pending, and every acked message ends in PostgreSQL once.

use std::collections::BTreeSet;
use std::time::Duration;

use teamchat_gateway::Gateway;
use teamchat_testkit::redis_server::RedisServer;
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

async fn synced(pg: &sqlx::PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT client_id FROM messages")
        .fetch_all(pg)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_redis_restarts() {
    let mut redis = RedisServer::start().await;
    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(env.worker_config("w1"), stop.clone()));
    let pg = env.pg().await;

    let mut client = Client::connect(gateway.addr(), &env.token("u1", &["t"])).await;
    client.join("t").await;
    let mut acked = BTreeSet::new();
    for n in 0..100 {
        client.send_message("t", &format!("a{n}"), "b").await;
        acked.insert(format!("a{n}"));
    }
    redis.kill().await;
    redis.restart().await;
    // Sends resume once the gateway reconnected; each is retried with its client_id until
    // acked, as a client would.
    for n in 0..100 {
        let id = format!("b{n}");
        loop {
            client
                .send(
                    serde_json::json!({"type":"message:send","team":"t","client_id":id,"body":"b"}),
                )
                .await;
            let reply = client.recv().await;
            match reply["type"].as_str() {
                Some("message:ack") => break,
                Some("error") if reply["code"] == "unavailable" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => panic!("unexpected {reply}"),
            }
        }
        acked.insert(id);
    }
    eventually(
        Duration::from_secs(30),
        "every acked message synced",
        || async { (synced(&pg).await == acked).then_some(()) },
    )
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(rows, 200, "each once");
    stop.cancel();
}
