//! A PostgreSQL crash: the worker reports not-ready, acks nothing meanwhile, and once
//! PostgreSQL is back every acked message is synced exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use teamchat_gateway::Gateway;
use teamchat_testkit::pg_server::PgServer;
use teamchat_testkit::{Client, TestEnv, eventually, http_get};
use tokio_util::sync::CancellationToken;

async fn synced(url: &str) -> Option<BTreeSet<String>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .ok()?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT client_id FROM messages")
        .fetch_all(&pool)
        .await
        .ok()?;
    pool.close().await;
    Some(ids.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_holds_acks_and_loses_nothing() {
    let pg = PgServer::start().await;
    let mut env = TestEnv::new().await;
    env.database_url = pg.url();
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut config = env.worker_config("w1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let health = config.listen;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));

    let mut client = Client::connect(gateway.addr(), &env.token("u1", &["t"])).await;
    client.join("t").await;
    let mut acked = BTreeSet::new();
    for n in 0..50 {
        client.send_message("t", &format!("a{n}"), "b").await;
        acked.insert(format!("a{n}"));
    }
    eventually(
        Duration::from_secs(30),
        "the first messages synced",
        || async { (synced(&pg.url()).await? == acked).then_some(()) },
    )
    .await;

    pg.kill();
    for n in 0..50 {
        client.send_message("t", &format!("b{n}"), "b").await; // Redis still takes them
        acked.insert(format!("b{n}"));
    }
    eventually(Duration::from_secs(20), "the worker not ready", || async {
        let (status, body) = http_get(health, "/readyz", &[]).await;
        (status == 503 && body["postgres"] == false).then_some(())
    })
    .await;
    // Nothing written meanwhile can have been acked: every new entry is unread or pending.
    let keys = env.keys();
    let mut redis = env.redis().await;
    let stream = keys.ingest(keys.shard_of("t"));
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::AsyncCommands::xinfo_groups(&mut redis, &stream)
            .await
            .unwrap();
    let group = groups.groups.iter().find(|g| g.name == "sync").unwrap();
    let unread = group.lag.unwrap_or(0);
    assert_eq!(group.pending + unread, 50, "acked only what was committed");

    pg.restart();
    eventually(Duration::from_secs(30), "everything synced", || async {
        (synced(&pg.url()).await? == acked).then_some(())
    })
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 100, "each once");
    assert_eq!(http_get(health, "/readyz", &[]).await.0, 200);
    stop.cancel();
}
