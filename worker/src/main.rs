//! `teamchat-worker`: parse config, then sync until SIGTERM or Ctrl-C, or run `replay`,
//! `export` or `erase` once.

use clap::Parser;
use teamchat_shared::config::{WorkerCommand, WorkerConfig};
use tokio_util::sync::CancellationToken;

// jemalloc: the sync path allocates per entry and per row, and the system allocator costs
// about a fifth of the worker's throughput (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    teamchat_shared::logging::init(config.log_json);
    match config.command.clone() {
        None | Some(WorkerCommand::Sync) => {
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                teamchat_shared::runtime::shutdown_signal().await;
                stop.cancel();
            });
            teamchat_worker::run(config, shutdown).await
        }
        Some(WorkerCommand::Replay { team, archive_url }) => {
            let stats =
                teamchat_worker::replay::replay(&config, team.as_deref(), archive_url.as_deref())
                    .await?;
            tracing::info!(
                teams = stats.teams,
                events = stats.events,
                missing_ranges = stats.missing.len(),
                "replay done"
            );
            Ok(())
        }
        Some(WorkerCommand::Export {
            team,
            from,
            to,
            since,
            until,
            format,
        }) => {
            let spec = teamchat_worker::replay::ExportSpec {
                from,
                to,
                since,
                until,
                format,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            teamchat_worker::replay::export(&config, &team, &spec, &mut out).await?;
            Ok(())
        }
        Some(WorkerCommand::Erase { user, team, wait }) => {
            let erased = teamchat_worker::erase::erase(&config, &user, &team, wait).await?;
            println!("{}", serde_json::json!({"user": user, "teams": &erased}));
            let waiting: Vec<&str> = erased
                .iter()
                .filter(|e| !e.scrubbed)
                .map(|e| e.team.as_str())
                .collect();
            anyhow::ensure!(
                waiting.is_empty(),
                "the deletes in {waiting:?} were not synced within {wait:?} (are the workers running?): run erase again"
            );
            Ok(())
        }
    }
}
