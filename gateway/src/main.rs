//! `teamchat-gateway`: parse config, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use teamchat_shared::config::GatewayConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    teamchat_shared::logging::init(config.log_json);
    let gateway = teamchat_gateway::Gateway::start(config).await?;
    tracing::info!(addr = %gateway.addr(), "gateway listening");
    teamchat_gateway::shutdown_signal().await;
    gateway.stop().await;
    Ok(())
}
