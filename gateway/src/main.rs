//! `teamchat-gateway`: parse config, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use teamchat_shared::config::GatewayConfig;

// jemalloc: less memory per idle connection and less CPU per connect and delivery than
// the system allocator (docs/architecture.md has the measurements).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// A storm of connections frees much of what it allocated (handshakes, openings); jemalloc
// gives such pages back only when the process allocates again, and an idle gateway hardly
// does. A background thread returns them within a few seconds: 10,000 idle connections
// held ≈ 0.5 KiB each of freed pages without it. (`MALLOC_CONF`-style options; the
// `_RJEM_MALLOC_CONF` environment variable still overrides them.)
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static u8> =
    Some(&b"background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:0\0"[0]);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    teamchat_shared::logging::init(config.log_json);
    let gateway = teamchat_gateway::Gateway::start(config).await?;
    tracing::info!(addr = %gateway.addr(), "gateway listening");
    teamchat_shared::runtime::shutdown_signal().await;
    gateway.stop().await;
    Ok(())
}
