//! deploy/k8s agrees with the binaries: every variable a Deployment sets (directly, or
//! through the ConfigMaps and Secrets it takes whole) is one its binary reads; probes hit
//! the health endpoints on the port the binary listens on; the gateway's grace period
//! covers its preStop wait and its drain. (The manifests' schema is checked in
//! `.ci/run` by kubernetes-validate.)

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;
use teamchat_shared::config::{GatewayConfig, WorkerConfig};

use crate::compose::{repo, variables};

/// Every object of every manifest.
fn objects() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = repo(&format!(
            "deploy/k8s/{}",
            file.file_name().unwrap().to_string_lossy()
        ));
        for document in serde_norway::Deserializer::from_str(&text) {
            objects.push(Value::deserialize(document).unwrap());
        }
    }
    objects
}

fn keys(map: &Value) -> Vec<String> {
    map.as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_manifests_agree_with_the_binaries() {
    let objects = objects();
    let named = |kind: &str, name: &str| -> &Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let mut deployments = BTreeMap::new();
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let spec = &deployment["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let binary = container["command"][0].as_str().unwrap().to_owned();
        let read = match binary.as_str() {
            "teamchat-gateway" => variables(GatewayConfig::command()),
            "teamchat-worker" => variables(WorkerConfig::command()),
            other => panic!("unknown binary {other}"),
        };
        let mut set: BTreeSet<String> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        for source in container["envFrom"].as_sequence().unwrap() {
            if let Some(name) = source["configMapRef"]["name"].as_str() {
                set.extend(keys(&named("ConfigMap", name)["data"]));
            }
            if let Some(name) = source["secretRef"]["name"].as_str() {
                set.extend(keys(&named("Secret", name)["stringData"]));
            }
        }
        for variable in &set {
            assert!(read.contains(variable), "{binary} does not read {variable}");
        }
        let value = |name: &str| {
            container["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
                .map(str::to_owned)
        };
        let listen_var = if binary == "teamchat-gateway" {
            "LISTEN"
        } else {
            "WORKER_LISTEN"
        };
        let listen = value(listen_var).unwrap_or_else(|| panic!("{binary} sets {listen_var}"));
        let port = listen.rsplit(':').next().unwrap().parse::<u64>().unwrap();
        assert_eq!(
            container["ports"][0]["containerPort"].as_u64(),
            Some(port),
            "{binary}"
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        if binary == "teamchat-gateway" {
            let wait: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let drain_s = value("DRAIN_GRACE_MS").unwrap().parse::<u64>().unwrap() / 1000;
            let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(
                grace > wait + drain_s,
                "grace {grace} s ≤ preStop {wait} s + drain {drain_s} s"
            );
        }
        deployments.insert(
            binary,
            deployment["metadata"]["name"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(deployments.len(), 2, "a gateway and a worker Deployment");
    // The autoscaler and the disruption budget are the gateway's; the connections metric
    // the autoscaler reads is one the gateway exports.
    let gateway = &deployments["teamchat-gateway"];
    let hpa = objects
        .iter()
        .find(|o| o["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(gateway.as_str())
    );
    let metric = hpa["spec"]["metrics"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|m| m["pods"]["metric"]["name"].as_str())
        .unwrap();
    assert_eq!(metric, teamchat_shared::metrics::CONNECTIONS);
    assert!(objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
}
