//! Deployment tests: what an operator runs beside the binaries agrees with them —
//! compose.yaml and the files it mounts (`compose`), the alerting rules (`alerts`), and
//! the Grafana dashboard, every panel of which shows data from a real Prometheus
//! (`dashboard`), the Kubernetes manifests (`kubernetes`), and `scripts/run`, which stops
//! all it started on Ctrl-C (`run_script`).

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod compose;
mod dashboard;
mod kubernetes;
mod run_script;
