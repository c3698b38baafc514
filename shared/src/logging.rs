//! Tracing set-up for the binaries: human output on a terminal, JSON when asked.

use tracing_subscriber::EnvFilter;

/// `json` selects one JSON object per line; the level comes from `RUST_LOG` (default `info`).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // stderr: stdout is for a command's output (`teamchat-worker export`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
