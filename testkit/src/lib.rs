//! Test support: every test gets its own Redis key prefix and its own PostgreSQL database
//! on the real servers at `REDIS_URL` / `DATABASE_URL`, tokens signed like a real issuer's,
//! and a WebSocket client that speaks docs/protocol.md over TCP.

pub mod client;
pub mod cluster;
pub mod http_session;
pub mod pg_server;
pub mod redis_server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use teamchat_shared::config::{GatewayConfig, WorkerConfig};
use teamchat_shared::keys::Keys;
use teamchat_shared::redis_conn::Redis;

pub use client::Client;
pub use tokio_tungstenite;

pub const SECRET: &str = "teamchat-testkit-secret-for-tests-only";
const SHARDS: u32 = 4;

/// One test's isolated slice of Redis and PostgreSQL, removed when dropped.
pub struct TestEnv {
    pub prefix: String,
    pub redis_url: String,
    /// With `TEST_BACKEND=cluster`, the Redis Cluster (`TEST_REDIS_CLUSTER_URLS`) the
    /// test's gateways and workers run on instead of `redis_url`: the same tests on the
    /// second backend (`scripts/test` runs the cross-gateway ones both ways).
    pub cluster_urls: Option<String>,
    pub database_url: String,
    /// `DATABASE_URL`: where the test's database was created, and is dropped from.
    admin_url: String,
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Drop for TestEnv {
    /// Removes the test's keys and database: a run of the suite would otherwise leave
    /// ≈ 150 databases and ≈ 100 MB of Redis data behind, and a Redis holding much data
    /// rewrites its AOF in the middle of later work. Best effort: a test that stopped its
    /// servers leaves nothing to remove. (On a thread of its own: a test's runtime cannot
    /// be blocked on from within.)
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let redis_urls: Vec<String> = match &self.cluster_urls {
            Some(urls) => urls.split(',').map(str::to_owned).collect(),
            None => vec![self.redis_url.clone()],
        };
        let one_by_one = self.cluster_urls.is_some();
        let (admin_url, database) = (self.admin_url.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            for url in &redis_urls {
                remove_keys(url, &prefix, one_by_one);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(drop_database(&admin_url, &database));
        });
        let _ = cleanup.join();
    }
}

/// Unlinks every key under `prefix` (`one_by_one` on a cluster node, where keys of several
/// slots cannot go in one command; a replica refuses, its master's unlink reaches it).
fn remove_keys(redis_url: &str, prefix: &str, one_by_one: bool) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut scan = redis::cmd("SCAN");
    scan.cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(1000);
    let keys: Vec<String> = match scan.iter(&mut conn) {
        Ok(keys) => keys.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    let chunk_size = if one_by_one { 1 } else { 500 };
    for chunk in keys.chunks(chunk_size) {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
    }
}

/// Drops the test's database, ending its connections (servers a test left running).
async fn drop_database(admin_url: &str, database: &str) {
    let Ok(admin) = admin_url.parse::<PgConnectOptions>() else {
        return;
    };
    let connecting = tokio::time::timeout(Duration::from_secs(5), admin.connect());
    if let Ok(Ok(mut conn)) = connecting.await {
        let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        let dropping = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn);
        let _ = tokio::time::timeout(Duration::from_secs(30), dropping).await;
    }
}

impl TestEnv {
    /// A fresh key prefix and a fresh, empty database.
    pub async fn new() -> Self {
        // `RUST_LOG=debug cargo test` shows what the gateways and workers log.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat".into());
        let name = unique_name();
        let admin: PgConnectOptions = admin_url.parse().expect("DATABASE_URL parses");
        let mut conn = admin
            .connect()
            .await
            .expect("PostgreSQL at DATABASE_URL (run scripts/test)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("creating the test database");
        let database_url = admin.database(&name).to_url_lossy().to_string();
        // The schema is in place, as in a deployment where a worker has started once.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url)
            .await
            .expect("test database");
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .expect("applying migrations");
        pool.close().await;
        let cluster_urls = (std::env::var("TEST_BACKEND").as_deref() == Ok("cluster")).then(|| {
            std::env::var("TEST_REDIS_CLUSTER_URLS")
                .expect("TEST_BACKEND=cluster needs TEST_REDIS_CLUSTER_URLS (scripts/test)")
        });
        TestEnv {
            prefix: name,
            redis_url,
            cluster_urls,
            database_url,
            admin_url,
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.prefix.clone(), SHARDS)
    }

    fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--redis-url={}", self.redis_url),
            format!("--redis-prefix={}", self.prefix),
            format!("--shards={SHARDS}"),
            format!("--database-url={}", self.database_url),
        ];
        if let Some(urls) = &self.cluster_urls {
            args.push(format!("--redis-cluster-urls={urls}"));
        }
        args
    }

    /// A gateway on a free loopback port; `extra` are more CLI flags (`--heartbeat-ms=200`).
    pub fn gateway_config(&self, extra: &[&str]) -> GatewayConfig {
        let mut args = vec!["teamchat-gateway".to_owned(), "--listen=127.0.0.1:0".into()];
        args.extend(self.common_args());
        args.push(format!("--jwt-secret={SECRET}"));
        // Tests send in bursts; those about limits set their own (later flags win).
        for flag in [
            "--rate-send-per-min",
            "--rate-typing-per-min",
            "--rate-join-per-min",
            "--rate-receipt-per-min",
        ] {
            args.push(format!("{flag}=1000000"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        GatewayConfig::try_parse_from(args).expect("gateway flags parse")
    }

    pub fn worker_args(&self, consumer: &str) -> Vec<String> {
        let mut args = self.common_args();
        args.push(format!("--consumer={consumer}"));
        args.push("--listen=127.0.0.1:0".into());
        args.push("--batch-wait-ms=20".into());
        args
    }

    pub fn worker_config(&self, consumer: &str) -> WorkerConfig {
        let mut args = vec!["teamchat-worker".to_owned()];
        args.extend(self.worker_args(consumer));
        WorkerConfig::try_parse_from(args).expect("worker flags parse")
    }

    /// The test's database.
    pub async fn pg(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .expect("test database")
    }

    /// A connection to the Redis the test's gateways use (the cluster's, with
    /// `TEST_BACKEND=cluster`).
    pub async fn redis(&self) -> Redis {
        if let Some(urls) = &self.cluster_urls {
            let nodes: Vec<&str> = urls.split(',').collect();
            let cluster = redis::cluster::ClusterClient::new(nodes)
                .unwrap()
                .get_async_connection()
                .await
                .expect("the Redis Cluster at TEST_REDIS_CLUSTER_URLS");
            return Redis::Cluster(cluster);
        }
        let conn = redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at REDIS_URL (run scripts/test)");
        Redis::Direct(conn)
    }

    /// Every entry of a Redis stream of the test, as text: for checking what it does not
    /// hold any more (an erased message's text).
    pub async fn stream_text(&self, stream: &str) -> String {
        let raw: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut self.redis().await)
            .await
            .expect("XRANGE of a test stream");
        format!("{raw:?}")
    }

    /// Appends a raw `message` entry for `team` to its shard's ingest stream, at the team's
    /// next offset and seq, bypassing the append script's checks (for poison entries and
    /// backlogs). Returns its offset.
    pub async fn inject_ingest(&self, team: &str, data: &str) -> u64 {
        use redis::AsyncCommands;
        let keys = self.keys();
        let mut redis = self.redis().await;
        let offset: u64 = redis
            .hincr(keys.team_meta(team), "offset", 1)
            .await
            .unwrap();
        let seq: u64 = redis.hincr(keys.team_meta(team), "seq", 1).await.unwrap();
        let fields = [
            ("team", team.to_owned()),
            ("off", offset.to_string()),
            ("k", "message".to_owned()),
            ("seq", seq.to_string()),
            ("d", data.to_owned()),
        ];
        let _: String = redis
            .xadd(keys.ingest(keys.shard_of(team)), "*", &fields)
            .await
            .unwrap();
        offset
    }

    /// A valid token for `user`, member of `teams`, expiring in an hour.
    pub fn token(&self, user: &str, teams: &[&str]) -> String {
        sign(
            &json!({"sub": user, "teams": teams, "name": format!("{user} name"), "exp": now() + 3600}),
        )
    }
}

/// A free loopback port (for servers started as processes on a port the test chooses).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a gateway binary as a process on `port`, configured like `gateway_config` plus
/// `env` (variable, value) pairs; it is killed when the handle drops. Waits until it listens.
pub async fn spawn_gateway(
    binary: &std::path::Path,
    config: &GatewayConfig,
    port: u16,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let child = tokio::process::Command::new(binary)
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", &config.redis.redis_url)
        .env(
            "REDIS_CLUSTER_URLS",
            config.redis.redis_cluster_urls.join(","),
        )
        .env("REDIS_PREFIX", &config.redis.redis_prefix)
        .env("SHARDS", config.redis.shards.to_string())
        .env("DATABASE_URL", &config.database_url)
        .env("JWT_SECRET", SECRET)
        .env("RATE_SEND_PER_MIN", "1000000")
        .env("RATE_JOIN_PER_MIN", "1000000")
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the gateway binary");
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway did not listen on port {port}");
}

/// Waits until the worker synced `team` up to `offset` (its contiguous watermark).
pub async fn wait_for_watermark(pg: &PgPool, team: &str, offset: i64) {
    eventually(Duration::from_secs(30), "the sync watermark", || async {
        let synced: Option<i64> =
            sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = $1")
                .bind(team)
                .fetch_optional(pg)
                .await
                .ok()?;
        (synced == Some(offset)).then_some(())
    })
    .await;
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    sign_with(claims, SECRET)
}

pub fn sign_with(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a token")
}

/// `ws://` URL of a gateway's WebSocket endpoint.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`. For state that
/// has no event to await (rows a worker writes into PostgreSQL).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs a path of a gateway; returns the status and the JSON body.
pub async fn http_get(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    try_http_get(addr, path_and_query, headers)
        .await
        .unwrap_or_else(|| panic!("GET http://{addr}{path_and_query} failed"))
}

/// Like `http_get`, but None when the server cannot be reached or the exchange fails.
pub async fn try_http_get(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Value)> {
    let (status, _, body) = try_http(addr, "GET", path_and_query, headers, Vec::new()).await?;
    Some((status, body_value(&body)))
}

/// POSTs a JSON body to a gateway; returns the status and the JSON body.
pub async fn http_post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let (status, _, body) = try_http(addr, "POST", path, &[], body)
        .await
        .unwrap_or_else(|| panic!("POST http://{addr}{path} failed"));
    (status, body_value(&body))
}

/// One HTTP/1.1 exchange: status, response headers and raw body; None when it fails.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<(u16, hyper::HeaderMap, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body))).ok()?)
        .await
        .ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, body))
}

/// A JSON body as a value; any other body as a string.
fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::String(String::from_utf8_lossy(body).into()))
}

/// `len` bytes of words of a work chat in a pseudo-random order, the same every call: a
/// message body that compresses as chat text does, not as one sentence repeated.
pub fn work_chat(len: usize) -> String {
    const WORDS: [&str; 16] = [
        "release", "review", "deploy", "rollback", "incident", "schedule", "owner", "notes",
        "thursday", "on-call", "customer", "latency", "ticket", "merge", "staging", "alert",
    ];
    let (mut text, mut n) = (String::with_capacity(len + 16), 0u64);
    while text.len() < len {
        n = n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        text.push_str(WORDS[(n >> 60) as usize]);
        text.push(' ');
    }
    text.truncate(len);
    text
}
