//! The system under test: gateway processes started by the benchmark on the local Redis and
//! PostgreSQL, and what /proc says about their CPU time and memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

pub const SECRET: &str = "teamchat-bench-secret-for-loopback-runs";

#[derive(Args, Clone, Debug)]
pub struct StackArgs {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat"
    )]
    pub database_url: String,
    /// The gateway binary; by default the one beside this binary (same cargo profile).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Gateways serve TLS (a throwaway certificate made with `openssl`) and the load
    /// generator connects over wss://: what TLS costs in memory and CPU.
    #[arg(long)]
    pub tls: bool,
    /// Gateways run with `WS_DEFLATE` (permessage-deflate for the connections that offer
    /// it; `idle` then offers it).
    #[arg(long)]
    pub deflate: bool,
    /// Run the gateways and the worker on this Redis Cluster (seed nodes, comma-separated)
    /// instead of `--redis-url`; each master's CPU is measured.
    #[arg(long, value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,
    /// Gateways ack only once this many replicas have an append (`REDIS_WAIT_REPLICAS`).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
}

/// The certificate authority of a `--tls` run, kept for the run's length.
static TEST_CA: std::sync::OnceLock<teamchat_testkit::tls::TestCa> = std::sync::OnceLock::new();

impl StackArgs {
    /// The Redis the probers and the clean-up reach first: the cluster's first seed node,
    /// or `--redis-url`.
    pub fn first_redis_url(&self) -> &str {
        self.redis_cluster_urls
            .first()
            .map_or(self.redis_url.as_str(), String::as_str)
    }

    /// The variables that point a gateway or worker at the Redis of this run.
    fn redis_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", self.redis_url.clone()),
            ("REDIS_CLUSTER_URLS", self.redis_cluster_urls.join(",")),
        ]
    }

    fn gateway_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.gateway_bin {
            Some(path) => Ok(path.clone()),
            None => beside_this_binary("teamchat-gateway"),
        }
    }
}

/// A binary of the workspace built with this one (same cargo profile).
fn beside_this_binary(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .join(name))
}

/// A worker process syncing the gateways' streams (`REDIS_PREFIX`) into PostgreSQL, as a
/// deployment runs one beside them; killed when dropped.
pub struct WorkerProcess {
    pub pid: u32,
    _child: Child,
}

pub async fn start_worker(args: &StackArgs, prefix: &str) -> anyhow::Result<WorkerProcess> {
    let bin = beside_this_binary("teamchat-worker")?;
    let child = Command::new(&bin)
        .envs(args.redis_env())
        .env("REDIS_PREFIX", prefix)
        .env("DATABASE_URL", &args.database_url)
        .env("WORKER_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with -p teamchat-worker)",
                bin.display()
            )
        })?;
    let pid = child.id().context("worker pid")?;
    Ok(WorkerProcess { pid, _child: child })
}

/// The pid of the PostgreSQL server (its postmaster) `database_url` reaches.
pub async fn postgres_pid(args: &StackArgs) -> anyhow::Result<u32> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&args.database_url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))
        .context("PostgreSQL on this machine (its processes are measured)")?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let parent = rest.split_whitespace().nth(1).context("stat format")?;
    Ok(parent.parse()?)
}

/// A gateway process, or a peer server's (`start_peers`); killed when dropped.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl GatewayProcess {
    /// Kills the process and waits until it is gone: nothing it sent can then reach
    /// Redis after a clean-up.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `count` gateways sharing a fresh key prefix (so runs do not see each other's
/// teams) and waits until each answers `/readyz`. Limits that would throttle a load
/// generator are lifted; everything else is the production default.
pub async fn start_gateways(
    args: &StackArgs,
    count: usize,
) -> anyhow::Result<(Vec<GatewayProcess>, String)> {
    let bin = args.gateway_bin()?;
    // As in a deployment, a worker has put the schema in place: a gateway reads a new
    // team's counters from it (without it, each would be an error reply).
    teamchat_worker::store::Store::connect(&args.database_url, 1, None)
        .await?
        .migrate()
        .await?;
    let prefix = format!("bench{}x{}", std::process::id(), teamchat_testkit::now());
    // (Values as paths: most are file names.)
    let mut tls_env = Vec::new();
    if args.tls {
        let ca = TEST_CA.get_or_init(teamchat_testkit::tls::TestCa::new);
        tls_env.push(("TLS_CERT_FILE", ca.server_cert()));
        tls_env.push(("TLS_KEY_FILE", ca.server_key()));
        crate::client::use_tls(ca.client_config());
    }
    if args.deflate {
        tls_env.push(("WS_DEFLATE", PathBuf::from("true")));
    }
    let mut gateways = Vec::new();
    for _ in 0..count {
        let port = teamchat_testkit::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(&bin)
            .env("LISTEN", addr.to_string())
            .envs(args.redis_env())
            .env("REDIS_WAIT_REPLICAS", args.wait_replicas.to_string())
            .env("REDIS_PREFIX", &prefix)
            .env("DATABASE_URL", &args.database_url)
            .env("JWT_SECRET", SECRET)
            .env("RATE_SEND_PER_MIN", "1000000000")
            .env("RATE_JOIN_PER_MIN", "1000000000")
            .env("RATE_TYPING_PER_MIN", "1000000000")
            .env("RATE_HTTP_PER_MIN", "1000000000")
            .env("MAX_CONNECTIONS_PER_USER", "1000000")
            .env("RUST_LOG", "warn")
            .envs(tls_env.iter().cloned())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("gateway pid")?;
        let mut gateway = GatewayProcess { addr, pid, child };
        // Ready before the next port is picked: a port found free is free only until
        // bound, so two gateways started together could be handed the same one (the
        // second then exits, and both addresses reach the first).
        wait_ready(addr).await?;
        if let Some(status) = gateway.child.try_wait()? {
            bail!("the gateway on {addr} exited: {status}");
        }
        gateways.push(gateway);
    }
    Ok((gateways, prefix))
}

/// The CA certificate of a `--tls` run, for generator processes to trust.
pub fn tls_ca() -> Option<PathBuf> {
    TEST_CA.get().map(teamchat_testkit::tls::TestCa::ca)
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..1_000 {
        let ready = match TEST_CA.get() {
            // Serving once it completes a handshake (it connects to Redis before).
            Some(ca) => teamchat_testkit::tls::connect(addr, ca.client_config())
                .await
                .is_ok(),
            None => matches!(
                teamchat_testkit::try_http_get(addr, "/readyz", &[]).await,
                Some((200, _))
            ),
        };
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("gateway {addr} not ready after 20 s")
}

/// The server the fan-out drives: teamchat's gateways, or one of the comparison peers in
/// bench/peers (the same rooms over two processes and one Redis, without durability).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Teamchat,
    /// Node's Socket.IO 4.8 with the Redis Streams adapter (bench/peers/socketio).
    Socketio,
    /// Rust's socketioxide 0.18 with its Redis pub/sub adapter (bench/peers/socketioxide).
    Socketioxide,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Teamchat => "teamchat",
            Server::Socketio => "socketio",
            Server::Socketioxide => "socketioxide",
        }
    }
}

/// Where the peers live: bench/peers of the checkout this binary was built from.
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");

/// Starts `count` processes of a peer server on free ports, sharing a fresh key prefix
/// (`REDIS_PREFIX`: its Redis stream or channels; `clean_redis` deletes what it wrote),
/// and waits until each answers `/readyz`. `program`: the socketioxide binary or the Node
/// server's script, instead of the built one in bench/peers.
pub async fn start_peers(
    args: &StackArgs,
    server: Server,
    program: Option<&Path>,
    count: usize,
) -> anyhow::Result<(Vec<GatewayProcess>, String)> {
    let (program, hint) = match server {
        Server::Teamchat => bail!("teamchat is not a peer"),
        Server::Socketio => (
            program.map_or_else(
                || PathBuf::from(PEERS).join("socketio/server.js"),
                Path::to_path_buf,
            ),
            "run `npm ci` in bench/peers/socketio",
        ),
        Server::Socketioxide => (
            program.map_or_else(
                || {
                    PathBuf::from(PEERS)
                        .join("socketioxide/target/release/teamchat-bench-peer-socketioxide")
                },
                Path::to_path_buf,
            ),
            "build it with `cargo build --release --manifest-path bench/peers/socketioxide/Cargo.toml`",
        ),
    };
    if !program.exists() {
        bail!("{} not found: {hint}", program.display());
    }
    let prefix = format!("bench{}x{}", std::process::id(), teamchat_testkit::now());
    let mut peers = Vec::new();
    for _ in 0..count {
        let port = teamchat_testkit::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = match server {
            Server::Socketio => {
                let mut node = Command::new("node");
                node.arg(&program);
                node
            }
            _ => Command::new(&program),
        };
        let child = command
            .env("PORT", port.to_string())
            .env("REDIS_URL", &args.redis_url)
            .env("REDIS_PREFIX", &prefix)
            // Its "listening" would land in the report (stdout); errors still show.
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({hint})", program.display()))?;
        let pid = child.id().context("peer pid")?;
        let mut peer = GatewayProcess { addr, pid, child };
        // Ready before the next port is picked (see start_gateways).
        wait_peer_ready(&mut peer, server).await?;
        peers.push(peer);
    }
    Ok((peers, prefix))
}

/// Waits for a peer's `/readyz`, failing at once when the process has ended.
async fn wait_peer_ready(peer: &mut GatewayProcess, server: Server) -> anyhow::Result<()> {
    for _ in 0..1_000 {
        if let Some(status) = peer.child.try_wait()? {
            bail!(
                "the {} server exited before it was ready: {status}",
                server.name()
            );
        }
        if let Some((200, _)) = teamchat_testkit::try_http_get(peer.addr, "/readyz", &[]).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "{} server {} not ready after 20 s",
        server.name(),
        peer.addr
    )
}

/// Deletes every key of a run's prefix, so benchmarks do not fill Redis (every master's,
/// on a cluster: one key per UNLINK there, since keys of several slots cannot share one).
pub async fn clean_redis(args: &StackArgs, prefix: &str) -> anyhow::Result<()> {
    for (_, url) in redis_servers(args).await? {
        let mut redis = teamchat_shared::config::redis_client(&url)?
            .get_multiplexed_async_connection()
            .await?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key).ignore();
                }
                let _: () = unlink.query_async(&mut redis).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// The Redis servers of the run, named and with their URLs: `redis`, or on a cluster its
/// masters (`redis master 1`, … in the order of their addresses).
async fn redis_servers(args: &StackArgs) -> anyhow::Result<Vec<(String, String)>> {
    if args.redis_cluster_urls.is_empty() {
        return Ok(vec![("redis".to_owned(), args.redis_url.clone())]);
    }
    let mut seed = teamchat_shared::config::redis_client(args.first_redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut seed)
        .await?;
    let mut masters: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let master = fields.get(2)?.contains("master") && fields.len() > 8;
            master.then(|| fields[1].split('@').next().unwrap_or_default().to_owned())
        })
        .collect();
    masters.sort();
    Ok(masters
        .into_iter()
        .enumerate()
        .map(|(i, address)| {
            // A node alone in its cluster knows no address of its own (`:7200`): the seed.
            let url = match address.starts_with(':') {
                true => args.first_redis_url().to_owned(),
                false => format!("redis://{address}"),
            };
            (format!("redis master {}", i + 1), url)
        })
        .collect())
}

/// The Redis servers' process ids (same machine), for their CPU time: `redis`, or each
/// master of a cluster.
pub async fn redis_pids(args: &StackArgs) -> anyhow::Result<Vec<(String, u32)>> {
    let mut pids = Vec::new();
    for (name, url) in redis_servers(args).await? {
        pids.push((name, redis_pid(&url).await?));
    }
    Ok(pids)
}

/// The process id of the Redis at `url` (same machine).
pub async fn redis_pid(url: &str) -> anyhow::Result<u32> {
    let mut redis = teamchat_shared::config::redis_client(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .context("process_id in INFO server")
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// CPU time (user + system, all threads) a process has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// A process's CPU time with its children's: those running now, and those it reaped
/// (PostgreSQL forks a process per connection).
pub fn tree_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let fields = stat_fields(pid)?;
    // utime, stime, and the reaped children's cutime, cstime.
    let mut ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(fields) = stat_fields(child)
            && fields[1].parse::<u32>().ok() == Some(pid)
        {
            ticks +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces): the
/// state first.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn measured(name: &str, pid: u32) -> Duration {
    match name {
        "postgres" => tree_cpu_time(pid),
        _ => cpu_time(pid),
    }
    .unwrap_or_default()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time used by a set of processes between two points: start with `CpuMeter::start`,
/// read with `elapsed`.
pub struct CpuMeter {
    start: Vec<(String, u32, Duration)>,
    wall: std::time::Instant,
}

impl CpuMeter {
    /// A process named `postgres` is measured with its children (one per connection).
    pub fn start(processes: &[(String, u32)]) -> Self {
        let start = processes
            .iter()
            .map(|(name, pid)| (name.clone(), *pid, measured(name, *pid)))
            .collect();
        CpuMeter {
            start,
            wall: std::time::Instant::now(),
        }
    }

    /// Per process: CPU seconds used since the start, and that as a share of one core.
    pub fn elapsed(&self) -> Vec<(String, f64, f64)> {
        let wall = self.wall.elapsed().as_secs_f64();
        self.start
            .iter()
            .map(|(name, pid, before)| {
                let used = measured(name, *pid).saturating_sub(*before);
                (name.clone(), used.as_secs_f64(), used.as_secs_f64() / wall)
            })
            .collect()
    }
}
