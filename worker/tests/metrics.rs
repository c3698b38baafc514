//! Every metric docs/operations.md lists is on `/metrics` after a small load, with the
//! documented type, and the docs list exactly the metrics the code defines.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use teamchat_gateway::Gateway;
use teamchat_shared::metrics::{CATALOGUE, Kind};
use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::{Client, TestEnv, free_port, http_get, wait_for_watermark};
use tokio_util::sync::CancellationToken;

/// (name, type) of each row of the metrics table in docs/operations.md.
fn documented() -> Vec<(String, String)> {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    docs.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`teamchat_")?
                .strip_suffix('`')?;
            Some((format!("teamchat_{name}"), cells.get(2)?.to_string()))
        })
        .collect()
}

/// `# TYPE name kind` lines of a Prometheus text exposition.
fn types(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    match http_get(addr, path, &[]).await {
        (200, serde_json::Value::String(text)) => text,
        other => panic!("GET {path}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exposed_with_its_type() {
    // The docs and the code agree.
    let in_code: Vec<(String, String)> = CATALOGUE
        .iter()
        .map(|(name, kind, _, _)| {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            (name.to_string(), kind.to_owned())
        })
        .collect();
    assert_eq!(
        documented(),
        in_code,
        "docs/operations.md and shared/src/metrics.rs disagree"
    );

    // A small load touching every metric.
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&["--rate-join-per-min=4"]))
        .await
        .unwrap();
    let mut config = env.worker_config("w1");
    config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.trim_every_ms = 50;
    let worker_addr = config.listen;
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(config, stop.clone()));

    let (mut bad, _) = client::open(gateway.addr(), Auth::Query("bad"), None)
        .await
        .unwrap();
    assert_eq!(client::close_code(&mut bad).await.0, 4001);
    let mut ann = Client::connect(gateway.addr(), &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(gateway.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    ann.send(json!({"type":"room:join","team":"u"})).await;
    assert_eq!(ann.expect("room:error").await["code"], "rate_limited");
    for n in 0..3 {
        ann.send_message("t", &format!("m{n}"), "b").await;
    }
    ann.send(json!({"type":"typing:start","team":"t"})).await;
    ben.send(json!({"type":"receipt:update","team":"t","seq":2}))
        .await;
    // A poison entry, for the dead letters.
    env.inject_ingest("t", "{").await;
    let pg = env.pg().await;
    teamchat_testkit::eventually(Duration::from_secs(20), "the receipt synced", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
            .fetch_one(&pg)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    wait_for_watermark(&pg, "t", 5).await;
    drop(ben);

    let text = get_text(gateway.addr(), "/metrics").await;
    if std::env::var("SHOW_METRICS").is_ok() {
        println!("{text}");
    }
    let gateway_metrics = types(&text);
    let worker_metrics = types(&get_text(worker_addr, "/metrics").await);
    for (name, kind) in documented() {
        let exposed = if name.starts_with("teamchat_gateway_") {
            &gateway_metrics
        } else {
            &worker_metrics
        };
        assert_eq!(exposed.get(&name), Some(&kind), "{name} on /metrics");
    }
    stop.cancel();
}
