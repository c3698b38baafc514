//! `teamchat-worker`: parse config, sync until SIGTERM or Ctrl-C.

use clap::Parser;
use teamchat_shared::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    teamchat_shared::logging::init(config.log_json);
    let shutdown = CancellationToken::new();
    tokio::spawn(teamchat_worker::shutdown_on_signal(shutdown.clone()));
    teamchat_worker::run(config, shutdown).await
}
