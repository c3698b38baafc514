//! prometheus/alerts.yml is valid (promtool), its unit tests pass (an alert fires when its
//! condition holds and not before), and it names only metrics the binaries export.

use std::collections::BTreeSet;
use std::process::Command;

use teamchat_shared::metrics::CATALOGUE;

fn promtool(args: &[&str]) -> String {
    let dir = format!("{}/../prometheus", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alerting_rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["check", "config", "--syntax-only", "prometheus.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn the_alerting_rules_name_only_exported_metrics() {
    let rules = std::fs::read_to_string(format!(
        "{}/../prometheus/alerts.yml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let exported: BTreeSet<&str> = CATALOGUE.iter().map(|(name, ..)| *name).collect();
    let named: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("teamchat_"))
        .map(|word| word.trim_end_matches("_bucket").to_owned())
        .collect();
    assert!(!named.is_empty());
    let unknown: Vec<&String> = named
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
}
