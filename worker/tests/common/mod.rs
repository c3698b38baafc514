//! A gateway and a worker in-process, and a small load that touches every metric: used by
//! the metrics and dashboard tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::json;
use teamchat_gateway::Gateway;
use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::{Client, TestEnv, free_port, http_get, wait_for_watermark};
use tokio_util::sync::CancellationToken;

pub struct Stack {
    pub env: TestEnv,
    pub gateway: Gateway,
    /// The worker's `/metrics`, `/healthz`, `/readyz`.
    pub worker_addr: SocketAddr,
    pub stop: CancellationToken,
}

/// A gateway (joins limited to 4 a minute, so one can be refused) and a worker.
pub async fn stack() -> Stack {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(
        env.gateway_config(&["--rate-join-per-min=4", &format!("--api-keys={API_KEY}")]),
    )
    .await
    .unwrap();
    let mut config = env.worker_config("w1");
    config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.trim_every_ms = 50;
    let worker_addr = config.listen;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));
    Stack {
        env,
        gateway,
        worker_addr,
        stop,
    }
}

/// The server API key of the stack's gateway.
pub const API_KEY: &str = "api-key-of-the-test-stack-0123456789abcdef";

/// A refused token, joins (one rate-limited), messages, a server API call, typing, a receipt, a dead letter
/// and a disconnect; returns once the worker synced all of it.
pub async fn touch_every_metric(stack: &Stack) {
    let (env, addr) = (&stack.env, stack.gateway.addr());
    let (mut bad, _) = client::open(addr, Auth::Query("bad"), None).await.unwrap();
    assert_eq!(client::close_code(&mut bad).await.0, 4001);
    let mut ann = Client::connect(addr, &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(addr, &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    ann.send(json!({"type":"room:join","team":"u"})).await;
    assert_eq!(ann.expect("room:error").await["code"], "rate_limited");
    for n in 0..20 {
        ann.send_message("t", &format!("m{n}"), "b").await;
    }
    // The chat model's requests (the dashboard shows them apart).
    ann.send(json!({"type":"reaction:add","team":"t","seq":1,"emoji":"👍"}))
        .await;
    ann.expect("message:ack").await;
    ann.send(json!({"type":"message:pin","team":"t","seq":1}))
        .await;
    ann.expect("message:ack").await;
    // A server API call.
    let auth = format!("Bearer {API_KEY}");
    let (status, _) = http_get(
        addr,
        "/v1/server/teams/t",
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, 200);
    ann.send(json!({"type":"typing:start","team":"t"})).await;
    ben.send(json!({"type":"receipt:update","team":"t","seq":5}))
        .await;
    ann.expect("receipt:update").await;
    // A poison entry: a dead letter. In a team without a room here: it takes an offset
    // that its team stream never gets, and a room would see a hole it cannot fill (1013).
    let offset = env.inject_ingest("x", "{").await;
    wait_for_watermark(&env.pg().await, "x", offset as i64).await;
    // Pub/sub messages no room can decode are passed over (and counted).
    let mut redis = env.redis().await;
    let _: i64 = redis::AsyncCommands::publish(&mut redis, env.keys().team_channel("t"), "?")
        .await
        .unwrap();
    teamchat_testkit::eventually(
        std::time::Duration::from_secs(10),
        "the garbled message counted",
        || async {
            let (_, text) = teamchat_testkit::http_get(addr, "/metrics", &[]).await;
            let counted = text
                .as_str()?
                .contains("teamchat_gateway_undecodable_events_total");
            counted.then_some(())
        },
    )
    .await;
    drop(ben);
    // A gateway serving TLS (in this process: the same metrics recorder) shows the TLS
    // metrics, at zero.
    let ca = teamchat_testkit::tls::TestCa::new();
    let cert = format!("--tls-cert-file={}", ca.server_cert().display());
    let key = format!("--tls-key-file={}", ca.server_key().display());
    let tls = teamchat_gateway::Gateway::start(env.gateway_config(&[&cert, &key]))
        .await
        .expect("a TLS gateway starts");
    tls.stop().await;
}
