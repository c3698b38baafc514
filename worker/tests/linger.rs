//! `BATCH_LINGER_MS=0`: a worker that writes each read at once (the other tests run
//! the default, which waits for more entries after a small read) still syncs every
//! event, in order, and keeps the watermark moving.

use serde_json::Value;
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, wait_for_watermark};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_linger_syncs_every_event() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config("w1");
    config.batch_linger_ms = 0;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(teamchat_worker::run(config, stop.clone()));
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    let mut last = Value::Null;
    for n in 0..40 {
        last = ann
            .send_message("t", &format!("c{n}"), &format!("body {n}"))
            .await;
    }
    let offset: i64 = last["offset"].as_str().unwrap().parse().unwrap();
    let pg = env.pg().await;
    wait_for_watermark(&pg, "t", offset).await;
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM messages WHERE team = 't' ORDER BY seq")
            .fetch_all(&pg)
            .await
            .unwrap();
    let expected: Vec<(i64, String)> = (0..40).map(|n| (n + 1, format!("body {n}"))).collect();
    assert_eq!(stored, expected);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
