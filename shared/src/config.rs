//! Configuration of the binaries: every setting is a CLI flag and an environment variable,
//! with the defaults documented in the README's configuration table.

use clap::{Args, Parser};
use std::net::SocketAddr;

use crate::keys::Keys;
use crate::redis_conn::Redis;

/// Where Redis is and how keys are laid out; gateways and workers must agree on it.
#[derive(Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis server URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// A Redis Cluster's seed nodes, comma-separated (`redis://10.0.0.1:6379,redis://…`):
    /// when set, teamchat runs on the cluster instead of `REDIS_URL` (docs/operations.md,
    /// "Redis Cluster").
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,
    /// Prefix of every Redis key and channel (lets several deployments share one Redis).
    #[arg(long, env = "REDIS_PREFIX", default_value = "tc")]
    pub redis_prefix: String,
    /// Number of shards teams are hashed over; each shard has one ingest stream.
    #[arg(long, env = "SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// CA certificate (PEM) a `rediss://` server's certificate must chain to (the system's
    /// roots when unset).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a Redis that asks for one (with `REDIS_CLIENT_KEY_FILE`).
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<std::path::PathBuf>,
}

impl RedisArgs {
    pub fn keys(&self) -> Keys {
        Keys::new(self.redis_prefix.clone(), self.shards)
    }

    /// Whether teamchat runs on a Redis Cluster (`REDIS_CLUSTER_URLS`).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_urls().is_empty()
    }

    /// The cluster's seed nodes; none for an empty `REDIS_CLUSTER_URLS` (a deployment file
    /// that passes the variable through whether or not it is set).
    fn cluster_urls(&self) -> Vec<String> {
        let urls = self.redis_cluster_urls.iter();
        urls.filter(|url| !url.trim().is_empty()).cloned().collect()
    }

    /// The shared connection to the configured Redis or Redis Cluster: requests fail after
    /// `timeouts.response`, a lost connection is opened again.
    pub async fn connect(&self, timeouts: Timeouts) -> redis::RedisResult<Redis> {
        if self.is_cluster() {
            let conn = self
                .cluster_client(timeouts, None)?
                .get_async_connection()
                .await?;
            return Ok(Redis::Cluster(conn));
        }
        let mut manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(timeouts.response)
            .set_connection_timeout(Some(timeouts.connect));
        if let Some(retries) = timeouts.retries {
            manager = manager
                .set_number_of_retries(retries)
                .set_min_delay(std::time::Duration::from_millis(50))
                .set_max_delay(std::time::Duration::from_millis(500));
        }
        let conn = self
            .client()?
            .get_connection_manager_with_config(manager)
            .await?;
        Ok(Redis::Single(conn))
    }

    /// A connection of its own to the configured Redis (`Redis::Direct`: not reconnected;
    /// a lost connection fails its requests), or to the cluster.
    pub async fn connect_direct(&self, timeouts: Timeouts) -> redis::RedisResult<Redis> {
        if self.is_cluster() {
            return self.connect(timeouts).await;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(timeouts.response);
        let conn = self
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Redis::Direct(conn))
    }

    /// Connects and answers whether Redis (every master of a cluster) answers PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.connect_direct(Timeouts::default()).await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// A client of the configured cluster, with the CA and client certificate for
    /// `rediss://` nodes; `pushes` receives what the nodes push (RESP3: pub/sub messages).
    pub fn cluster_client(
        &self,
        timeouts: Timeouts,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.cluster_urls())
            .connection_timeout(timeouts.connect)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if let Some(response) = timeouts.response {
            builder = builder.response_timeout(response);
        }
        if let Some(retries) = timeouts.retries {
            builder = builder.retries(retries as u32);
        }
        if let Some(certs) = self.tls_certificates()? {
            builder = builder.certs(certs);
        }
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        builder.build()
    }

    /// A client of the configured Redis (see [`redis_client`]), with the CA and client
    /// certificate for a `rediss://` URL.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis_client_with(&self.redis_url, self.tls_certificates()?)
    }

    /// The CA and client certificate configured for `rediss://` (none set: `None`).
    fn tls_certificates(&self) -> redis::RedisResult<Option<redis::TlsCertificates>> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                redis::RedisError::from(std::io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ))
            })
        };
        let root_cert = self.redis_ca_file.as_deref().map(read).transpose()?;
        let client_tls = match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        Ok(
            (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
                client_tls,
                root_cert,
            }),
        )
    }
}

/// A Redis client whose TCP connections send at once (`TCP_NODELAY`). redis-rs leaves
/// Nagle's algorithm on, which holds a small request back until the connection's earlier
/// segment is acknowledged by TCP; with delayed ACKs that is often only when a reply
/// comes, so requests on a multiplexed connection waited for replies to others.
pub fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    redis_client_with(url, None)
}

/// [`redis_client`] with the certificates of a `rediss://` URL (none: the system's roots).
/// How long a Redis connection waits: to connect, for a reply (`None`: as long as it
/// takes), and how often a failed request is retried (`None`: the client's default).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: std::time::Duration,
    pub response: Option<std::time::Duration>,
    pub retries: Option<usize>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: std::time::Duration::from_secs(5),
            response: None,
            retries: None,
        }
    }
}

pub fn redis_client_with(
    url: &str,
    tls: Option<redis::TlsCertificates>,
) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let info = info.set_tcp_settings(tcp);
    match tls {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
}

/// The gateway: WebSocket and HTTP server.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "teamchat-gateway",
    about = "teamchat WebSocket gateway",
    version,
    args_override_self = true
)]
pub struct GatewayConfig {
    /// Address the HTTP/WebSocket server listens on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// PostgreSQL URL: the worker writes it; the gateway reads HTTP history and a new team's counters from it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat"
    )]
    pub database_url: String,
    /// HS256 secret that client tokens are signed with: at least 32 bytes, and none of the
    /// development defaults shipped with teamchat (both enforced outside `DEV_MODE`).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, default_value = "")]
    pub jwt_secret: String,
    /// Verify tokens with this public key instead of `JWT_SECRET` (RS256, ES256 or EdDSA,
    /// by the key's type): the PEM itself, or the path of a PEM file.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// Verify tokens with the keys of this JWKS document (its `kid` picks the key); read
    /// again when it changes or on SIGHUP.
    #[arg(long, env = "JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Certificate chain (PEM) served on `LISTEN` for https:// and wss:// (with
    /// `TLS_KEY_FILE`); read again when either file changes or on SIGHUP. Unset: plain.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `TLS_CERT_FILE`.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Accept WebSocket permessage-deflate (RFC 7692) offers: messages of 1 KiB and more
    /// go out compressed (once per fan-out frame), without context takeover.
    #[arg(long, env = "WS_DEFLATE")]
    pub ws_deflate: bool,
    /// Tokens must carry this `iss`.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Tokens must carry this `aud` (or list it).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Origins allowed to upgrade with a `tc_token` cookie and to call the HTTP API from a
    /// browser (CORS), comma-separated.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Interval of server pings; a connection silent for twice this is closed.
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,
    /// Largest frame a client may send, in bytes (close 1009 above it).
    #[arg(long, env = "MAX_FRAME", default_value_t = 1_048_576)]
    pub max_frame: usize,
    /// Largest message body, in bytes of UTF-8.
    #[arg(long, env = "MAX_BODY", default_value_t = 16_384)]
    pub max_body: usize,
    /// Largest message `meta`, in bytes of its JSON encoding.
    #[arg(long, env = "MAX_META", default_value_t = 4_096)]
    pub max_meta: usize,
    /// Rooms one connection may join at once.
    #[arg(long, env = "MAX_ROOMS", default_value_t = 10)]
    pub max_rooms: usize,
    /// Frames queued for one connection before it counts as too slow (close 1013).
    #[arg(long, env = "SEND_QUEUE", default_value_t = 1_024)]
    pub send_queue: usize,
    /// Bytes queued for one connection before it counts as too slow (close 1013).
    #[arg(long, env = "SEND_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub send_queue_bytes: u32,
    /// Longest a connection's socket may take no bytes while some wait to be written
    /// before the connection is given up.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u32,
    /// Most durable events one append script call carries (group commit: what queued for
    /// a shard while its previous call was in flight); 1 sends each event alone.
    #[arg(long, env = "APPEND_BATCH_MAX", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub append_batch_max: u32,
    /// Acks a durable event only once this many replicas of its Redis master have it
    /// (`WAIT` after each append call); 0 acks once the master has it. Without the
    /// replicas' confirmation within `REDIS_WAIT_TIMEOUT_MS` the senders get
    /// `unavailable` and retry (a message's retry with its `client_id` is idempotent).
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long an append waits for `REDIS_WAIT_REPLICAS` replicas.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_wait_timeout_ms: u64,
    /// Approximate number of events kept in each team stream (what recovery can replay).
    #[arg(long, env = "STREAM_MAXLEN", default_value_t = 100_000)]
    pub stream_maxlen: u64,
    /// How often a tailed team's stream top is checked for events pub/sub did not deliver.
    #[arg(long, env = "TAIL_CHECK_MS", default_value_t = 1_000)]
    pub tail_check_ms: u64,
    /// `message:send` requests per user per minute (bursts up to a quarter of it).
    #[arg(long, env = "RATE_SEND_PER_MIN", default_value_t = 120)]
    pub rate_send_per_min: u32,
    /// `typing:*` requests per user per minute.
    #[arg(long, env = "RATE_TYPING_PER_MIN", default_value_t = 120)]
    pub rate_typing_per_min: u32,
    /// `room:join` requests per user per minute.
    #[arg(long, env = "RATE_JOIN_PER_MIN", default_value_t = 60)]
    pub rate_join_per_min: u32,
    /// Open TCP connections this gateway serves at once (WebSocket and HTTP); beyond it a
    /// new connection is answered 503 and closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// How long a client may take to send a whole request head, the upgrade included, and
    /// how long an idle HTTP keep-alive connection is kept.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Keys of the server API (`Authorization: Bearer <key>`), comma-separated, each at
    /// least 32 bytes; the server API is off without one.
    #[arg(long, env = "API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Serve the server API on this address alone (not on `LISTEN`), so that it need not
    /// be reachable from the internet.
    #[arg(long, env = "API_LISTEN")]
    pub api_listen: Option<std::net::SocketAddr>,
    /// Server API requests per key per minute (429 beyond).
    #[arg(long, env = "RATE_API_PER_MIN", default_value_t = 6_000)]
    pub rate_api_per_min: u32,
    /// Read receipts written per user per minute (beyond, they wait and coalesce).
    #[arg(long, env = "RATE_RECEIPT_PER_MIN", default_value_t = 120)]
    pub rate_receipt_per_min: u32,
    /// HTTP API requests (history, credits) per user per minute (429 beyond).
    #[arg(long, env = "RATE_HTTP_PER_MIN", default_value_t = 120)]
    pub rate_http_per_min: u32,
    /// PostgreSQL connections the gateway keeps (history, a new team's counters).
    #[arg(long, env = "PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: u32,
    /// Longest a gateway's PostgreSQL statement may run before it is cancelled (the
    /// request gets `unavailable`).
    #[arg(long, env = "PG_STATEMENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub pg_statement_timeout_ms: u64,
    /// Connections one user may hold across all gateways (close 4029 beyond).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 5)]
    pub max_connections_per_user: u32,
    /// How long a gateway's presence and connection entries live without a refresh: the
    /// bound on how long users of a dead gateway still show online (refreshed every third).
    #[arg(long, env = "PRESENCE_TTL_MS", default_value_t = 30_000)]
    pub presence_ttl_ms: u64,
    /// Credits a message costs its sender.
    #[arg(long, env = "CREDIT_COST_MESSAGE", default_value_t = 1)]
    pub credit_cost_message: u64,
    /// Credits an edit costs.
    #[arg(long, env = "CREDIT_COST_EDIT", default_value_t = 1)]
    pub credit_cost_edit: u64,
    /// Credits a delete costs.
    #[arg(long, env = "CREDIT_COST_DELETE", default_value_t = 0)]
    pub credit_cost_delete: u64,
    /// Credits a read receipt costs.
    #[arg(long, env = "CREDIT_COST_RECEIPT", default_value_t = 0)]
    pub credit_cost_receipt: u64,
    /// Credits a reaction added or removed costs.
    #[arg(long, env = "CREDIT_COST_REACTION", default_value_t = 0)]
    pub credit_cost_reaction: u64,
    /// Credits a pin or unpin costs.
    #[arg(long, env = "CREDIT_COST_PIN", default_value_t = 0)]
    pub credit_cost_pin: u64,
    /// Credits a user may use in all, unless their token's `credit_limit` says otherwise;
    /// unset means unlimited.
    #[arg(long, env = "CREDIT_LIMIT")]
    pub credit_limit: Option<u64>,
    /// On SIGTERM, how long sessions get to finish and close (1012) before the gateway exits.
    #[arg(long, env = "DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,
    /// Clock-skew allowance for token expiry, in seconds (at most 30).
    #[arg(long, env = "TOKEN_LEEWAY_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=30))]
    pub token_leeway_s: u64,
    /// The longest lifetime of a token the application issues, in seconds: revocations
    /// and removals are kept this long, then forgotten (a longer-lived token outlives them).
    #[arg(long, env = "MAX_TOKEN_TTL_S", default_value_t = 2_592_000)]
    pub max_token_ttl_s: u64,
    /// `bad_request`/`unknown_type` errors within a minute that close a connection (1008).
    #[arg(long, env = "MAX_VIOLATIONS", default_value_t = 10)]
    pub max_violations: usize,
    /// A typist silent this long gets a `typing:stop` sent on their behalf.
    #[arg(long, env = "TYPING_TIMEOUT_MS", default_value_t = 6_000)]
    pub typing_timeout_ms: u64,
    /// Development only, unsafe in production: serves the demo page at `/` and mints a
    /// token for anyone at `POST /dev/token`.
    #[arg(long, env = "DEV_MODE")]
    pub dev_mode: bool,
    /// Lets `DEV_MODE` listen on an address other hosts reach (refused otherwise: anyone
    /// there could mint tokens).
    #[arg(long, env = "DEV_MODE_PUBLIC")]
    pub dev_mode_public: bool,
    /// Where the demo page (`demo/www`) and the built client library (`js/dist`) are.
    #[arg(long, env = "DEV_CLIENTS_DIR", default_value = "clients")]
    pub dev_clients_dir: String,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
}

/// The worker: syncs the ingest streams into PostgreSQL.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "teamchat-worker",
    about = "teamchat stream-to-PostgreSQL worker",
    version
)]
pub struct WorkerConfig {
    /// What to do; syncing when none is given.
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// PostgreSQL URL; migrations are applied at start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat"
    )]
    pub database_url: String,
    /// Consumer group the workers share.
    #[arg(long, env = "WORKER_GROUP", default_value = "sync")]
    pub group: String,
    /// This worker's consumer name; a restarted worker with the same name resumes its
    /// pending entries at once (others are reclaimed after `claim_idle_ms`).
    #[arg(long, env = "WORKER_NAME", default_value = "worker-1")]
    pub consumer: String,
    /// Most entries written in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Batches written at once, each in its own transaction (their writes commute); the
    /// pool has one more connection for everything else.
    #[arg(long, env = "WRITE_CONCURRENCY", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub write_concurrency: u32,
    /// Longest wait for new entries before a read returns what it has.
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 100)]
    pub batch_wait_ms: u64,
    /// After a read that filled less than half a batch, how long to wait for more
    /// entries before writing it (0: write at once): fewer, larger transactions at light
    /// load, for that much more sync lag (docs/performance.md, Storage sync).
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 100)]
    pub batch_linger_ms: u64,
    /// How often the ingest streams are trimmed behind what the group acknowledged.
    #[arg(long, env = "TRIM_EVERY_MS", default_value_t = 5_000)]
    pub trim_every_ms: u64,
    /// Events kept in each team stream: the newest this many (approximately) at least,
    /// never one the workers have not synced (the workers trim the team streams).
    #[arg(long, env = "STREAM_MAXLEN", default_value_t = 100_000)]
    pub stream_maxlen: u64,
    /// Also trim a team stream's events older than this (`7d`, `12h`), once synced;
    /// unset, time does not trim.
    #[arg(long, env = "STREAM_RETENTION", value_parser = humantime::parse_duration)]
    pub stream_retention: Option<std::time::Duration>,
    /// Drop the event archive's months that ended longer ago than this (`400d`); events
    /// older than it are no longer archived. Unset, the archive keeps everything.
    #[arg(long, env = "ARCHIVE_RETENTION", value_parser = humantime::parse_duration)]
    pub archive_retention: Option<std::time::Duration>,
    /// How often the team streams are trimmed (by one worker at a time).
    #[arg(long, env = "STREAM_TRIM_EVERY_MS", default_value_t = 60_000)]
    pub stream_trim_every_ms: u64,
    /// An entry delivered more often than this (the worker kept dying on it) is moved to
    /// the dead letters instead of being tried again.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// Longest a worker's PostgreSQL statement may run before it is cancelled and its
    /// batch retried (migrations are not bounded).
    #[arg(long, env = "WORKER_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,
    /// Entries pending this long on another consumer are claimed by this one.
    #[arg(long, env = "CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,
    /// Address of the worker's health endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "WORKER_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: std::net::SocketAddr,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
}

/// The worker's subcommands besides syncing.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum WorkerCommand {
    /// Sync the ingest streams into PostgreSQL (the default).
    Sync,
    /// Rebuild PostgreSQL rows from the teams' history: the team streams, and the event
    /// archive for what they no longer hold (idempotent; safe on a live system).
    Replay {
        /// Only this team; all teams when absent.
        #[arg(long)]
        team: Option<String>,
        /// The database whose event archive is read (into an empty database, say); by
        /// default `DATABASE_URL`, the one written to.
        #[arg(long)]
        archive_url: Option<String>,
    },
    /// Write a range of a team's history as NDJSON to stdout, one event per line: from the
    /// team stream, and from the event archive for what the stream no longer holds.
    Export {
        #[arg(long)]
        team: String,
        /// First offset to write.
        #[arg(long)]
        from: Option<u64>,
        /// Last offset to write.
        #[arg(long)]
        to: Option<u64>,
        /// Only events at or after this time (RFC 3339, `2026-12-01T00:00:00Z`).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        since: Option<std::time::SystemTime>,
        /// Only events at or before this time (RFC 3339).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        until: Option<std::time::SystemTime>,
        /// `ndjson`: the event as the stream holds it; `flat`: one object of fixed,
        /// typed columns per event (docs/operations.md, "Export formats").
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
    },
    /// Forget what a user wrote: delete their messages (members hear `message:deleted`),
    /// then, once the workers synced the deletes, blank their texts in PostgreSQL and the
    /// event archive and remove their entries from the streams (docs/operations.md,
    /// "Erasure"). Prints what was done as JSON; run it again if a team was not scrubbed.
    Erase {
        #[arg(long)]
        user: String,
        /// Only this team (repeat for several); every team the user wrote in when absent.
        #[arg(long)]
        team: Vec<String>,
        /// How long to wait for the running workers to sync the deletes (`2m`).
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

/// How `export` writes each event (one JSON object per line either way).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// `{"team","offset","kind","seq","data"}`: the kind's data as the stream holds it.
    #[default]
    Ndjson,
    /// Fixed columns, the same for every kind, for loading into a table.
    Flat,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// compose.yaml passes `REDIS_CLUSTER_URLS` through empty when it is not set: that is
    /// one Redis, not a cluster with a blank seed.
    #[test]
    fn an_empty_cluster_list_means_one_redis() {
        let parse = |urls: &str| {
            let flag = format!("--redis-cluster-urls={urls}");
            WorkerConfig::try_parse_from(["teamchat-worker", flag.as_str()]).unwrap()
        };
        assert!(!parse("").redis.is_cluster());
        assert!(parse("redis://a:1,redis://b:2").redis.is_cluster());
    }
}
