//! `teamchat-gateway`: parse config, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use teamchat_shared::config::GatewayConfig;

// jemalloc: less memory per idle connection and less CPU per connect and delivery than
// the system allocator (docs/architecture.md has the measurements).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
