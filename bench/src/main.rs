//! `teamchat-bench`: the load generator. Each scenario starts its own gateways on the local
//! Redis and PostgreSQL, drives them over real WebSockets with minted tokens, and prints
//! one JSON line per measured case and a Markdown table.

// The sync scenario runs the worker in this process: the worker binary's allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod client;
mod connect;
mod deflate_client;
mod fanout;
mod idle;
mod report;
mod socketio_client;
mod stack;
mod sync;
mod unread;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "teamchat-bench",
    about = "Load generator and benchmarks of teamchat"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Runs of each case; the tables show the run with the median headline figure.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// Idle connections: gateway memory per authenticated, joined connection.
    Idle(idle::IdleArgs),
    /// Rooms × members over two gateways at offered message rates.
    Fanout(fanout::FanoutArgs),
    /// Connect and reconnect storms.
    Connect(connect::ConnectArgs),
    /// Worker sync rate beside PostgreSQL's own, and the sync lag.
    Sync(sync::SyncArgs),
    /// `GET /v1/me/unread` as the teams' history grows.
    Unread(unread::UnreadArgs),
    /// One generator process's share of an idle run (started by `idle`).
    #[command(hide = true)]
    Hold(idle::HoldArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runs = cli.runs.max(1);
    match &cli.scenario {
        Scenario::Hold(args) => idle::hold(args).await?,
        Scenario::Idle(args) => {
            let rows = median_run(runs, "KiB per connection", || idle::run(args)).await?;
            report::print("idle", &rows);
        }
        Scenario::Fanout(args) => {
            let rows = median_run(runs, "deliveries/s", || fanout::run(args)).await?;
            report::print("fanout", &rows);
        }
        Scenario::Unread(args) => {
            let rows = median_run(runs, "p50 ms", || unread::run(args)).await?;
            report::print("unread", &rows);
        }
        Scenario::Connect(args) => {
            let rows = median_run(runs, "per second", || connect::run(args)).await?;
            report::print("connect", &rows);
        }
        Scenario::Sync(args) => {
            let mut all = Vec::new();
            for _ in 0..runs {
                all.push(sync::run(args).await?);
            }
            let rate_of_worker = |(rates, _): &(Vec<report::Row>, Vec<report::Row>)| {
                rates[0]
                    .get("% of best direct")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0)
            };
            all.sort_by(|a, b| rate_of_worker(a).total_cmp(&rate_of_worker(b)));
            let (rates, lag) = all.swap_remove(all.len() / 2);
            report::print("sync", &rates);
            if !lag.is_empty() {
                report::print("sync lag", &lag);
            }
        }
    }
    Ok(())
}

/// Runs a scenario `runs` times and keeps, row by row, the run whose `headline` is the
/// median, so every figure of a row comes from one real run.
async fn median_run<F, Fut>(
    runs: usize,
    headline: &str,
    mut scenario: F,
) -> anyhow::Result<Vec<report::Row>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<report::Row>>>,
{
    let mut all = Vec::new();
    for run in 0..runs {
        if runs > 1 {
            eprintln!("run {} of {runs}", run + 1);
        }
        all.push(scenario().await?);
    }
    // Step mode can stop at different rates in different runs: a case is shown if any
    // run reached it, and `runs` says how many did and which of them missed the target.
    let cases = all.iter().map(Vec::len).max().unwrap_or(0);
    let figure = |row: &report::Row| row.get(headline).and_then(|v| v.as_f64()).unwrap_or(0.0);
    Ok((0..cases)
        .map(|case| {
            let mut rows: Vec<&report::Row> = all.iter().filter_map(|run| run.get(case)).collect();
            rows.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
            let mut row = rows[rows.len() / 2].clone();
            if runs > 1 {
                let figures: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let missed = r.get("holds target") == Some(&false.into());
                        format!("{}{}", figure(r), if missed { " ✗" } else { "" })
                    })
                    .collect();
                let mut summary = figures.join(" / ");
                if rows.len() < runs {
                    summary += &format!(" ({} of {runs} runs got here)", rows.len());
                }
                row.0.push(("runs", summary.into()));
            }
            row
        })
        .collect())
}
