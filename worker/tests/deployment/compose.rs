//! compose.yaml and the files it mounts agree with the binaries: every service the README
//! names exists with a health check, every variable passed is one the binaries read, every
//! published port and scrape target matches the configured listen ports.

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde_norway::Value;
use teamchat_shared::config::{GatewayConfig, WorkerConfig};

pub(crate) fn repo(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The environment variables a binary reads (from its CLI definition), plus RUST_LOG.
pub(crate) fn variables(command: clap::Command) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    names.insert("RUST_LOG".into());
    names
}

fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let (k, v) = item.as_str().unwrap().split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn port_of(address: &str) -> &str {
    address.rsplit(':').next().unwrap()
}

#[test]
fn compose_file_agrees_with_the_binaries() {
    let compose: Value =
        serde_norway::from_str(&repo("compose.yaml")).expect("compose.yaml parses");
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "redis",
        "postgres",
        "gateway1",
        "gateway2",
        "balancer",
        "worker",
        "prometheus",
        "grafana",
    ] {
        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} missing"));
        assert!(
            service.get("healthcheck").is_some(),
            "{name} has no health check"
        );
        if let Some(depends) = service.get("depends_on").and_then(Value::as_mapping) {
            for (on, condition) in depends {
                assert_eq!(
                    condition["condition"].as_str(),
                    Some("service_healthy"),
                    "{name} → {on:?}"
                );
                assert!(
                    services.contains_key(on),
                    "{name} depends on a missing {on:?}"
                );
            }
        }
    }

    // The `cluster` profile: six nodes and the service that forms them into a cluster, which
    // the gateways and the worker wait for when the profile is on and use when
    // REDIS_CLUSTER_URLS is set.
    for n in 1..=6 {
        let node = &services[format!("redis-node-{n}").as_str()];
        assert_eq!(node["profiles"][0].as_str(), Some("cluster"), "node {n}");
        assert!(
            node["command"]
                .as_str()
                .unwrap()
                .contains("--cluster-enabled yes")
        );
        assert!(node.get("healthcheck").is_some(), "node {n}");
    }
    let forming = &services["redis-cluster"];
    assert_eq!(forming["profiles"][0].as_str(), Some("cluster"));
    assert_eq!(forming["depends_on"].as_mapping().unwrap().len(), 6);
    for name in ["gateway1", "gateway2", "worker"] {
        let service = &services[name];
        assert_eq!(
            service["depends_on"]["redis-cluster"]["required"].as_bool(),
            Some(false),
            "{name} needs the cluster only in its profile"
        );
        assert!(
            environment(service)
                .iter()
                .any(|(k, v)| k == "REDIS_CLUSTER_URLS" && v == "${REDIS_CLUSTER_URLS:-}"),
            "{name} passes REDIS_CLUSTER_URLS"
        );
    }

    let gateway_vars = variables(GatewayConfig::command());
    let worker_vars = variables(WorkerConfig::command());
    let mut prometheus_targets = BTreeSet::new();
    for name in ["gateway1", "gateway2"] {
        let service = &services[name];
        let env = environment(service);
        for (key, _) in &env {
            assert!(
                gateway_vars.contains(key),
                "{name} passes {key}, which the gateway does not read"
            );
        }
        let listen = env
            .iter()
            .find(|(k, _)| k == "LISTEN")
            .map(|(_, v)| v.clone())
            .expect("LISTEN");
        // Gateways are reached through the balancer only.
        assert!(
            service.get("ports").is_none(),
            "{name} is published past the balancer"
        );
        let exposed: Vec<&str> = service["expose"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            exposed,
            [port_of(&listen)],
            "{name}: expose vs LISTEN={listen}"
        );
        prometheus_targets.insert(format!("{name}:{}", port_of(&listen)));
    }
    // The balancer runs the repository's config, in front of exactly those gateways, on
    // the one published port.
    let balancer = &services["balancer"];
    let env = environment(balancer);
    let value = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("balancer: {key}"))
    };
    for (key, gateway) in [("GATEWAY1", "gateway1"), ("GATEWAY2", "gateway2")] {
        assert_eq!(value(key), format!("{gateway}:8080"), "{key}");
    }
    let published: Vec<&str> = balancer["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(port_of(published[0]), port_of(&value("HAPROXY_BIND")));
    let mounted = balancer["volumes"][0].as_str().unwrap();
    let config = mounted.split(':').next().unwrap().trim_start_matches("./");
    let haproxy_cfg = repo(config);
    for needed in [
        "${GATEWAY1}",
        "${GATEWAY2}",
        "${HAPROXY_BIND}",
        "GET /readyz",
    ] {
        assert!(haproxy_cfg.contains(needed), "{config} lacks {needed}");
    }
    let worker_env = environment(&services["worker"]);
    for (key, _) in &worker_env {
        assert!(
            worker_vars.contains(key),
            "worker passes {key}, which the worker does not read"
        );
    }
    let worker_listen = worker_env
        .iter()
        .find(|(k, _)| k == "WORKER_LISTEN")
        .map(|(_, v)| v.clone())
        .expect("WORKER_LISTEN");
    prometheus_targets.insert(format!("worker:{}", port_of(&worker_listen)));

    // Prometheus scrapes exactly those, and Grafana is provisioned with the dashboard.
    let prometheus: Value =
        serde_norway::from_str(&repo("prometheus/prometheus.yml")).expect("prometheus.yml parses");
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap().iter())
        .flat_map(|config| config["targets"].as_sequence().unwrap().iter())
        .map(|target| target.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(scraped, prometheus_targets);
    let datasource: Value =
        serde_norway::from_str(&repo("grafana/provisioning/datasources/prometheus.yaml")).unwrap();
    assert_eq!(
        datasource["datasources"][0]["uid"].as_str(),
        Some("prometheus")
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("grafana/dashboards/teamchat.json")).unwrap();
    assert_eq!(dashboard["panels"][0]["datasource"]["uid"], "prometheus");
    let provider: Value =
        serde_norway::from_str(&repo("grafana/provisioning/dashboards/teamchat.yaml")).unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}

#[test]
fn the_operations_doc_lists_every_variable_the_binaries_read() {
    let docs = repo("docs/operations.md");
    let section = docs
        .split("## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|line| {
            line.strip_prefix("| `")?
                .split('`')
                .next()
                .map(str::to_owned)
        })
        .collect();
    let mut read = variables(GatewayConfig::command());
    read.extend(variables(WorkerConfig::command()));
    read.remove("RUST_LOG");
    assert_eq!(documented, read);
}
