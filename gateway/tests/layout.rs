//! The source layout stays legible: the gateway's top-level modules import each other
//! without cycles (the data path reads one way), and docs/architecture.md names every
//! source file of the workspace, and no file that is gone.
//!
//! `cargo test -p teamchat-gateway --test layout -- --nocapture` prints the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file below `dir`, as paths relative to the repository.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path.strip_prefix(repo()).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// The first-level module names a file refers to as `crate::name` or in
/// `use crate::{a, b::c}`. Unit tests at the end of a file do not count.
fn crate_references(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap();
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the group's first level: after `{` or a `,` at depth 0.
            let (mut depth, mut expecting) = (0, true);
            let mut name = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if expecting && depth == 0 {
                        name.push(c);
                    }
                    continue;
                }
                if !name.is_empty() {
                    names.insert(std::mem::take(&mut name));
                    expecting = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting = true,
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The gateway's top-level modules and, for each, the others it refers to.
fn gateway_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo().join("gateway/src");
    let module_of = |file: &Path| -> Option<String> {
        let relative = file.strip_prefix("gateway/src").unwrap();
        let first = relative.components().next()?.as_os_str().to_str()?;
        let module = first.trim_end_matches(".rs");
        (module != "lib" && module != "main").then(|| module.to_owned())
    };
    let files = sources(&src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let source = std::fs::read_to_string(repo().join(file)).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for name in crate_references(&source) {
            if name != module && modules.contains(&name) {
                uses.insert(name);
            }
        }
    }
    graph
}

/// A cycle of the graph, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_gateways_modules_import_each_other_without_cycles() {
    let graph = gateway_graph();
    for (module, uses) in &graph {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("{module} -> {}", uses.join(", "));
    }
    assert!(graph.contains_key("session") && graph["session"].contains("room"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap().len(), 4);
    assert_eq!(
        crate_references("use crate::{a, b::{c, d}, e};\nuse crate::f::G;\nx(crate::h::i());"),
        ["a", "b", "e", "f", "h"].map(String::from).into()
    );
}

#[test]
fn the_architecture_doc_names_every_source_file() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let files: Vec<String> = ["gateway", "worker", "shared", "testkit", "bench"]
        .iter()
        .flat_map(|krate| sources(&repo().join(krate).join("src")))
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name {missing:?}"
    );
    // And it names no file that is not there.
    let named: BTreeSet<&str> = doc
        .split('`')
        .filter(|s| s.ends_with(".rs") && s.contains("/src/"))
        .collect();
    let stale: Vec<&&str> = named
        .iter()
        .filter(|f| !files.iter().any(|file| file == **f))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md names files that are gone: {stale:?}"
    );
}
