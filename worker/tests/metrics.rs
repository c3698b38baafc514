//! Every metric docs/operations.md lists is on `/metrics` after a small load, with the
//! documented type, and the docs list exactly the metrics the code defines.

mod common;

use std::collections::HashMap;

use teamchat_shared::metrics::{CATALOGUE, Kind};
use teamchat_testkit::http_get;

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
    let stack = common::stack().await;
    common::touch_every_metric(&stack).await;

    let text = get_text(stack.gateway.addr(), "/metrics").await;
    if std::env::var("SHOW_METRICS").is_ok() {
        println!("{text}");
    }
    let gateway_metrics = types(&text);
    let worker_metrics = types(&get_text(stack.worker_addr, "/metrics").await);
    for (name, kind) in documented() {
        let exposed = if name.starts_with("teamchat_gateway_") {
            &gateway_metrics
        } else {
            &worker_metrics
        };
        assert_eq!(exposed.get(&name), Some(&kind), "{name} on /metrics");
    }
    stack.stop.cancel();
}
