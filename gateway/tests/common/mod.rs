//! Shared set-up of the gateway tests: in-process gateways and workers on real ports, over
//! the test's own Redis prefix and PostgreSQL database.
#![allow(dead_code)]

use std::net::SocketAddr;

use teamchat_gateway::Gateway;
use teamchat_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

pub async fn gateway(env: &TestEnv, extra: &[&str]) -> Gateway {
    Gateway::start(env.gateway_config(extra))
        .await
        .expect("gateway starts")
}

/// Two gateways sharing the test's Redis and database; they reach each other only
/// through Redis.
pub async fn two_gateways(env: &TestEnv) -> (Gateway, Gateway) {
    (gateway(env, &[]).await, gateway(env, &[]).await)
}

/// A worker syncing the test's ingest streams until the token is cancelled.
pub fn worker(env: &TestEnv, consumer: &str) -> CancellationToken {
    let stop = CancellationToken::new();
    let config = env.worker_config(consumer);
    let token = stop.clone();
    tokio::spawn(async move {
        teamchat_worker::run(config, token)
            .await
            .expect("worker runs")
    });
    stop
}

pub fn addr(gateway: &Gateway) -> SocketAddr {
    gateway.addr()
}
