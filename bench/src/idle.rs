//! Idle connections: N authenticated connections, each joined to a team of 10, spread over
//! as many gateway processes as the 20,000-open-files limit needs; gateway RSS per
//! connection with each gateway's start-up RSS subtracted. The generator spreads itself
//! over child processes (`teamchat-bench hold`) for the same reason.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use futures_util::stream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::client;
use crate::report::{Row, round};
use crate::stack::{self, StackArgs};

/// Connections per process: below the 20,000 open files a process may have here.
const PER_PROCESS: usize = 17_000;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// Connection counts to measure, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    pub connections: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    pub team_size: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// `teamchat-bench hold`: one generator process's share of the connections.
#[derive(Args, Clone, Debug)]
pub struct HoldArgs {
    #[arg(long, value_delimiter = ',')]
    pub gateways: Vec<SocketAddr>,
    /// The first connection number of this process, and how many it holds.
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long, default_value_t = 10)]
    pub team_size: usize,
    /// Connect over wss://, trusting this CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Offer permessage-deflate (idle connections get no message large enough to be
    /// compressed, which tungstenite could not read).
    #[arg(long)]
    pub deflate: bool,
}

pub async fn run(args: &IdleArgs) -> anyhow::Result<Vec<Row>> {
    let largest = args.connections.iter().copied().max().unwrap_or(0);
    check_open_files_limit(largest.min(PER_PROCESS) + 1_000)?;
    let mut rows = Vec::new();
    for &n in &args.connections {
        rows.push(measure(args, n).await?);
    }
    Ok(rows)
}

async fn measure(args: &IdleArgs, n: usize) -> anyhow::Result<Row> {
    let processes = n.div_ceil(PER_PROCESS).max(1);
    let (gateways, prefix) = stack::start_gateways(&args.stack, processes).await?;
    let baseline: u64 = gateways
        .iter()
        .map(|g| stack::rss_bytes(g.pid))
        .sum::<anyhow::Result<u64>>()?;
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.to_string()).collect();

    let started = Instant::now();
    let mut holders = Vec::new();
    for p in 0..processes {
        let first = p * PER_PROCESS;
        let count = PER_PROCESS.min(n - first);
        let mut child = Command::new(std::env::current_exe()?)
            .args(["hold", "--gateways", &addrs.join(",")])
            .arg(format!("--first={first}"))
            .arg(format!("--count={count}"))
            .arg(format!("--team-size={}", args.team_size))
            .args(stack::tls_ca().map(|ca| format!("--tls-ca={}", ca.display())))
            .args(args.stack.deflate.then_some("--deflate"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        holders.push((child, stdout));
    }
    // Each holder prints one line when all its connections have joined.
    let mut failed = 0usize;
    for (_, stdout) in &mut holders {
        let mut line = String::new();
        stdout.read_line(&mut line).await?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            bail!("a generator process failed: {line:?}");
        }
        failed += words
            .next()
            .and_then(|w| w.parse::<usize>().ok())
            .unwrap_or(0);
    }
    let connect_time = started.elapsed();
    let held = n - failed;
    // Let the last presence and receipt frames be written, and the gateways' allocator
    // return the pages the storm freed (its decay time is 2 s), before reading RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss: u64 = gateways
        .iter()
        .map(|g| stack::rss_bytes(g.pid))
        .sum::<anyhow::Result<u64>>()?;
    let per_connection = rss.saturating_sub(baseline) as f64 / held.max(1) as f64;
    eprintln!(
        "idle: {held} connections on {processes} gateways in {:.1} s, {:.0} B each",
        connect_time.as_secs_f64(),
        per_connection
    );
    for (mut child, _) in holders {
        drop(child.stdin.take());
        let _ = child.wait().await;
    }
    drop(gateways);
    stack::clean_redis(&args.stack, &prefix).await?;
    Ok(Row::new()
        .with("connections", n)
        .with("failed", failed)
        .with("gateway processes", processes)
        .with("gateway RSS MiB", round(rss as f64 / 1048576.0, 1))
        .with("baseline MiB", round(baseline as f64 / 1048576.0, 1))
        .with("KiB per connection", round(per_connection / 1024.0, 2))
        .with("connect s", round(connect_time.as_secs_f64(), 1)))
}

/// Holds `count` connections (connection i on gateway i mod G, team i / team_size) until
/// stdin closes; prints `ready <failed>` when all are joined.
pub async fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    if let Some(ca) = &args.tls_ca {
        client::use_tls(teamchat_testkit::tls::client_config(ca));
    }
    if args.deflate {
        client::offer_deflate();
    }
    let gateways = &args.gateways;
    let mut failed = 0;
    let mut first_error = None;
    let mut joined = stream::iter(args.first..args.first + args.count)
        .map(|n| async move {
            let team = format!("team{}", n / args.team_size);
            let token = client::token(&format!("user{n}"), &[&team]);
            let gateway = gateways[n % gateways.len()];
            let mut ws = client::connect(gateway, client::source_ip(n), &token).await?;
            client::join(&mut ws, &team, None).await?;
            anyhow::Ok(ws)
        })
        .buffer_unordered(512);
    while let Some(result) = joined.next().await {
        match result {
            Ok(ws) => {
                tokio::spawn(client::drain(ws));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("hold: {failed} connections failed, first: {e:#}");
    }
    println!("ready {failed}");
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    Ok(())
}

/// Fails early when a process may not open the files its share needs.
fn check_open_files_limit(needed: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if soft < needed {
        bail!(
            "the open-files limit is {soft}; raise it first (`ulimit -n 20000`), as scripts/bench does"
        );
    }
    Ok(())
}
