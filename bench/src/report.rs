//! Results: one JSON line per measured case (for scripts) and a Markdown table per scenario
//! (for people and docs/benchmarks.md).

use serde_json::Value;

/// One measured case: named fields in display order.
#[derive(Clone, Debug, Default)]
pub struct Row(pub Vec<(&'static str, Value)>);

impl Row {
    pub fn new() -> Self {
        Row(Vec::new())
    }

    pub fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((name, value.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Rounds to a few significant digits for display.
pub fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// Prints the rows of a scenario: JSON lines, then a Markdown table.
pub fn print(scenario: &str, rows: &[Row]) {
    for row in rows {
        let mut object = serde_json::Map::new();
        object.insert("scenario".into(), scenario.into());
        for (name, value) in &row.0 {
            object.insert((*name).into(), value.clone());
        }
        println!("{}", Value::Object(object));
    }
    let Some(first) = rows.first() else { return };
    println!();
    println!("**{scenario}**");
    println!();
    let names: Vec<&str> = first.0.iter().map(|(n, _)| *n).collect();
    println!("| {} |", names.join(" | "));
    println!("|{}", "---|".repeat(names.len()));
    for row in rows {
        let cells: Vec<String> = names
            .iter()
            .map(|name| match row.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    }
    println!();
}
