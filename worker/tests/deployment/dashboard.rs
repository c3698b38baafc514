//! A real Prometheus scrapes a gateway and a worker under a small load; every query of the
//! Grafana dashboard (grafana/dashboards/teamchat.json) must then return at least one
//! series. A panel that would show nothing fails this test.

use std::process::Stdio;
use std::time::Duration;

use super::common;

use serde_json::Value;
use teamchat_testkit::{eventually, free_port, try_http_get};

fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../grafana/dashboards/teamchat.json"
    ))
    .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// The series an instant query returns (empty on any error).
async fn query(prometheus: std::net::SocketAddr, expr: &str) -> Vec<Value> {
    let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let Some((200, body)) =
        try_http_get(prometheus, &format!("/api/v1/query?query={encoded}"), &[]).await
    else {
        return Vec::new();
    };
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let stack = common::stack().await;
    let dir = std::env::temp_dir().join(format!("teamchat-test-prometheus-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let prometheus_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
         - job_name: teamchat-gateway\n    static_configs:\n      - targets: ['{}']\n  \
         - job_name: teamchat-worker\n    static_configs:\n      - targets: ['{}']\n",
        stack.gateway.addr(),
        stack.worker_addr
    );
    std::fs::write(dir.join("prometheus.yml"), prometheus_config).unwrap();
    let prometheus_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus on PATH (scripts/test installs it)");
    eventually(
        Duration::from_secs(30),
        "Prometheus scraping both targets",
        || async {
            let up = query(prometheus_addr, "sum(up)").await;
            (up.first()?["value"][1] == "2").then_some(())
        },
    )
    .await;

    common::touch_every_metric(&stack).await;

    for expr in dashboard_queries() {
        eventually(
            Duration::from_secs(30),
            &format!("data for {expr}"),
            || async { (!query(prometheus_addr, &expr).await.is_empty()).then_some(()) },
        )
        .await;
    }
    stack.stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
