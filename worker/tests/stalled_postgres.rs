//! A PostgreSQL that stalls the worker's statements (a lock held elsewhere, say) does not
//! hold a batch forever: the statement is cancelled after `WORKER_STATEMENT_TIMEOUT_MS`,
//! the batch is retried (not dead-lettered), and it lands once the stall ends.
//! A file of its own: it reads the process-wide retries counter.

use std::time::Duration;

use sqlx::Connection;
use teamchat_testkit::{Client, TestEnv, eventually, free_port, http_get, wait_for_watermark};
use tokio_util::sync::CancellationToken;

/// `teamchat_worker_retries_total` on the worker's `/metrics` (0 before the first).
async fn retries(addr: std::net::SocketAddr) -> Option<f64> {
    let (_, text) = http_get(addr, "/metrics", &[]).await;
    let text = text.as_str()?.to_owned();
    Some(
        text.lines()
            .find_map(|line| line.strip_prefix("teamchat_worker_retries_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_statement_is_cancelled_and_its_batch_retried() {
    let env = TestEnv::new().await;
    let gateway = teamchat_gateway::Gateway::start(env.gateway_config(&[]))
        .await
        .unwrap();
    let mut config = env.worker_config("w1");
    config.statement_timeout_ms = 300;
    config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let worker_addr = config.listen;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));

    let mut client = Client::connect(gateway.addr(), &env.token("u1", &["t"])).await;
    client.join("t").await;
    client.send_message("t", "before", "b").await;
    let pg = env.pg().await;
    wait_for_watermark(&pg, "t", 1).await;
    let before = eventually(Duration::from_secs(10), "the worker's metrics", || {
        retries(worker_addr)
    })
    .await;

    // Another session holds the messages table: the worker's writes wait on its lock.
    let mut holder = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    for n in 0..5 {
        client.send_message("t", &format!("m{n}"), "b").await;
    }
    // Without the timeout the statement would wait for the lock and nothing would retry.
    eventually(
        Duration::from_secs(20),
        "a cancelled batch retried",
        || async {
            let now = retries(worker_addr).await?;
            (now >= before + 2.0).then_some(())
        },
    )
    .await;
    lock.rollback().await.unwrap();

    wait_for_watermark(&pg, "t", 6).await;
    let (stored, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM dead_letters)",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(
        (stored, dead),
        (6, 0),
        "every message stored, none dead-lettered"
    );
    stop.cancel();
}
