//! Connect storms: K clients connect and join at once (teams of 10, over two gateways);
//! then every one drops and resumes with `since`, as after a network blip.

use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::{self, Writes, Ws};
use crate::report::{Row, round};
use crate::stack::{self, CpuMeter, StackArgs};

#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Clients in the storm (one process holds at most ~18,000 sockets).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub team_size: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

pub async fn run(args: &ConnectArgs) -> anyhow::Result<Vec<Row>> {
    let (gateways, prefix) = stack::start_gateways(&args.stack, 2).await?;
    let addrs: Vec<_> = gateways.iter().map(|g| g.addr).collect();
    let processes = vec![
        ("gateways".to_owned(), gateways[0].pid),
        ("gateways".to_owned(), gateways[1].pid),
        (
            "redis".to_owned(),
            stack::redis_pid(args.stack.first_redis_url()).await?,
        ),
        ("generator".to_owned(), std::process::id()),
    ];
    let tokens: Vec<(String, String)> = (0..args.clients)
        .map(|n| {
            let team = format!("team{}", n / args.team_size);
            (client::token(&format!("user{n}"), &[&team]), team)
        })
        .collect();

    // The storm: everyone at once.
    let meter = CpuMeter::start(&processes);
    let writes = Writes::read(&addrs).await;
    let started = Instant::now();
    let storm = join_all(tokens.iter().enumerate().map(|(n, (token, team))| {
        let gateway = addrs[n % 2];
        async move {
            let began = Instant::now();
            let mut ws = client::connect(gateway, client::source_ip(n), token).await?;
            let joined = client::join(&mut ws, team, None).await?;
            anyhow::Ok((ws, joined, began.elapsed()))
        }
    }))
    .await;
    let storm_time = started.elapsed();
    let writes = Writes::between(writes, Writes::read(&addrs).await);
    let (connections, first) = summarize(storm);
    let mut rows = vec![row(
        "connect + join",
        args,
        &first,
        storm_time,
        &meter,
        writes,
    )];

    // Every client drops and resumes where it was, on the other gateway.
    let resumes: Vec<(Value, usize)> = connections
        .iter()
        .map(|(n, _, joined)| {
            (
                json!({"offset": joined["offset"], "epoch": joined["epoch"]}),
                *n,
            )
        })
        .collect();
    drop(connections);
    let meter = CpuMeter::start(&processes);
    let writes = Writes::read(&addrs).await;
    let started = Instant::now();
    let storm = join_all(resumes.iter().map(|(since, n)| {
        let (token, team) = &tokens[*n];
        let gateway = addrs[(n + 1) % 2];
        async move {
            let began = Instant::now();
            let mut ws = client::connect(gateway, client::source_ip(*n), token).await?;
            let joined = client::join(&mut ws, team, Some(since)).await?;
            anyhow::ensure!(joined["recovered"] == true, "not recovered: {joined}");
            anyhow::Ok((ws, joined, began.elapsed()))
        }
    }))
    .await;
    let storm_time = started.elapsed();
    let writes = Writes::between(writes, Writes::read(&addrs).await);
    let (connections, second) = summarize(storm);
    rows.push(row(
        "reconnect + resume",
        args,
        &second,
        storm_time,
        &meter,
        writes,
    ));
    drop(connections);
    drop(gateways);
    stack::clean_redis(&args.stack, &prefix).await?;
    Ok(rows)
}

type Outcome = anyhow::Result<(Ws, Value, Duration)>;

struct Storm {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    micros: Histogram<u64>,
}

/// The connections that made it (with their number and `room:joined`), and the timings.
fn summarize(outcomes: Vec<Outcome>) -> (Vec<(usize, Ws, Value)>, Storm) {
    let mut storm = Storm {
        ok: 0,
        failed: 0,
        first_error: None,
        micros: Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
    };
    let mut connections = Vec::new();
    for (n, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok((ws, joined, took)) => {
                storm.ok += 1;
                let _ = storm.micros.record(took.as_micros().max(1) as u64);
                connections.push((n, ws, joined));
            }
            Err(e) => {
                storm.failed += 1;
                storm.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (connections, storm)
}

fn row(
    case: &str,
    args: &ConnectArgs,
    storm: &Storm,
    took: Duration,
    meter: &CpuMeter,
    writes: Option<Writes>,
) -> Row {
    let ms = |q: f64| round(storm.micros.value_at_quantile(q) as f64 / 1000.0, 1);
    if let Some(error) = &storm.first_error {
        eprintln!("connect: {case}: {} failed, first: {error}", storm.failed);
    }
    // CPU seconds per process kind over the storm (both gateways summed).
    let cpu = |kind: &str| -> f64 {
        let used = meter.elapsed();
        used.iter()
            .filter(|(name, ..)| name == kind)
            .map(|(_, secs, _)| secs)
            .sum()
    };
    let per_connection_us = |kind: &str| round(cpu(kind) * 1e6 / storm.ok.max(1) as f64, 1);
    let per_connection = |count: Option<f64>| -> serde_json::Value {
        count.map_or(Value::Null, |n| round(n / storm.ok.max(1) as f64, 2).into())
    };
    Row::new()
        .with("case", case)
        .with("clients", args.clients)
        .with("failed", storm.failed)
        .with("seconds", round(took.as_secs_f64(), 2))
        .with("per second", round(storm.ok as f64 / took.as_secs_f64(), 0))
        .with("p50 ms", ms(0.5))
        .with("p99 ms", ms(0.99))
        .with("max ms", ms(1.0))
        .with("gateway CPU µs each", per_connection_us("gateways"))
        .with("redis CPU µs each", per_connection_us("redis"))
        .with("generator CPU µs each", per_connection_us("generator"))
        // Counted by the gateways until the last client joined: what reached the members
        // a little later (presence batches) is not in it.
        .with(
            "socket writes each",
            per_connection(writes.map(|w| w.writes)),
        )
        .with("frames each", per_connection(writes.map(|w| w.frames)))
}
