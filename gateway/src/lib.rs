//! The gateway: a thin, stateless WebSocket server. The data path, in module order:
//! `http` accepts connections and routes `/ws` upgrades to a `session` (one per
//! connection: authentication, the read loop, one function per request), whose replies
//! and room events go out through its `outlet`. A session joins teams through the `hub`,
//! which keeps one `room` per team (ordering, gap fill, fan-out, typing, presence) and
//! tails the team channels (`hub::tail`). Durable events are appended through `storage`
//! (Redis via `broker`; a new team's counters seeded from PostgreSQL). `protocol` is the
//! client contract's frames. docs/architecture.md walks the same path.

pub mod broker;
pub mod deflate;
pub mod http;
pub mod hub;
pub mod outlet;
pub mod protocol;
pub mod room;
pub mod session;
pub mod storage;
pub mod transport;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use teamchat_shared::config::GatewayConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::hub::Hub;
use crate::session::auth::Verifier;
use crate::session::connections::{self, Connections};
use crate::session::limits::RateLimits;
use crate::storage::Storage;

/// What every request handler and session shares.
pub struct AppState {
    pub config: GatewayConfig,
    pub verifier: Verifier,
    pub broker: Broker,
    /// Appends and team state, seeding a new team's counters from PostgreSQL.
    pub storage: Storage,
    pub hub: Arc<Hub>,
    pub db: sqlx::PgPool,
    /// Fires when the gateway stops: sessions close with 1012.
    pub shutdown: CancellationToken,
    /// The running sessions, awaited when draining.
    pub sessions: TaskTracker,
    pub rate_limits: RateLimits,
    /// This gateway's connections, counted per user across gateways in Redis.
    pub connections: Arc<Connections>,
    /// Places for `MAX_CONNECTIONS` open TCP connections.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Where HTTP sessions open their WebSocket session: the listening address, or with
    /// TLS a plain listener on loopback (the bridge does not encrypt to itself).
    pub addr: SocketAddr,
    /// The open HTTP sessions (SSE, long-polling).
    pub http_sessions: http::fallback::Sessions,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Binds `config.listen` (port 0 picks a free port), connects to Redis and serves.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        refuse_unsafe(&config)?;
        teamchat_shared::metrics::install();
        teamchat_shared::metrics::touch("teamchat_gateway_");
        let tls = transport::certificates::from_config(&config)?;
        let listener =
            listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let bridge_listener = match tls {
            // IPv6 may be off on loopback even when the gateway listens on `[::]`.
            Some(_) => Some(
                listen(bridge_addr(addr))
                    .or_else(|_| listen(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))))
                    .context("binding the loopback listener")?,
            ),
            None => None,
        };
        let bridge_to = match &bridge_listener {
            Some(listener) => listener.local_addr()?,
            None => addr,
        };
        let shutdown = CancellationToken::new();
        // Every statement is bounded: a stalled PostgreSQL answers `unavailable` instead of
        // holding requests and joins. No JIT: the gateway's statements are index lookups of
        // a few milliseconds, and JIT compiling one whose estimate looks large (the unread
        // counts over a team of a million messages) took 250 ms.
        let statement_timeout = config.pg_statement_timeout_ms.max(1).to_string();
        let pg = config
            .database_url
            .parse::<PgConnectOptions>()
            .context("parsing DATABASE_URL")?
            .options([
                ("statement_timeout", statement_timeout.as_str()),
                ("jit", "off"),
            ]);
        let db = PgPoolOptions::new()
            .max_connections(config.pg_pool_size.max(1))
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(pg);
        let broker = Broker::connect(&config).await?;
        let storage = Storage::new(broker.clone(), db.clone());
        let connections = Arc::new(Connections::default());
        let hub = Hub::start(
            &config,
            storage.clone(),
            connections.clone(),
            shutdown.clone(),
        )
        .await?;
        let verifier = Verifier::with_keys(session::signing_keys::from_config(&config)?);
        let rate_limits = RateLimits::new(&config);
        let config_max_connections = config.max_connections;
        metrics::gauge!(teamchat_shared::metrics::MAX_CONNECTIONS)
            .set(config_max_connections as f64);
        let state = Arc::new(AppState {
            verifier,
            config,
            broker,
            storage,
            hub,
            db,
            shutdown,
            sessions: TaskTracker::new(),
            rate_limits,
            connections,
            connection_slots: Arc::new(tokio::sync::Semaphore::new(
                config_max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            metrics: teamchat_shared::metrics::install(),
            addr: bridge_to,
            http_sessions: http::fallback::Sessions::default(),
        });
        tokio::spawn(connections::refresh(state.clone()));
        if let Some(path) = state.config.jwks_file.clone() {
            let checks = session::signing_keys::Checks::from_config(&state.config);
            let keys_of = state.clone();
            let install = move |keys| keys_of.verifier.install(keys);
            tokio::spawn(session::signing_keys::watch_jwks(
                path,
                checks,
                install,
                state.shutdown.clone(),
            ));
        }
        let forget = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => forget.rate_limits.forget_idle(),
                    _ = forget.shutdown.cancelled() => return,
                }
            }
        });
        if state.config.dev_mode {
            tracing::warn!(
                "DEV_MODE is on: anyone can get a token at POST /dev/token; never use it in production"
            );
        }
        let api_listener = match state.config.api_listen {
            Some(addr) => Some(listen(addr).with_context(|| format!("binding API_LISTEN {addr}"))?),
            None => None,
        };
        let api_addr = api_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let acceptor = tls.as_ref().map(|(acceptor, _)| acceptor.clone());
        if let Some((_, certificates)) = tls {
            let stop = state.shutdown.clone();
            tokio::spawn(transport::certificates::watch(certificates, stop));
        }
        if let Some(api_listener) = api_listener {
            tokio::spawn(http::serve(
                state.clone(),
                api_listener,
                true,
                acceptor.clone(),
            ));
        }
        if let Some(bridge_listener) = bridge_listener {
            tokio::spawn(http::serve(state.clone(), bridge_listener, false, None));
        }
        let task = tokio::spawn(http::serve(state.clone(), listener, false, acceptor));
        Ok(Self {
            addr,
            api_addr,
            state,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server API is served when `API_LISTEN` is set.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Drains: stops accepting, lets every session finish the request in hand and close
    /// with 1012, and waits for them up to `DRAIN_GRACE_MS`.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        self.state.connections.shut_down_all();
        let _ = self.task.await;
        self.state.sessions.close();
        let grace = Duration::from_millis(self.state.config.drain_grace_ms);
        if tokio::time::timeout(grace, self.state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.state.sessions.len(),
                "drain grace period over; stopping anyway"
            );
        }
    }
}

/// The development secrets shipped with teamchat (scripts/run, compose.yaml): anyone can
/// sign tokens with them.
pub const SHIPPED_SECRETS: &[&str] = &["dev-secret-change-me"];

/// The shortest `JWT_SECRET` accepted outside development: HS256 is as strong as its key.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuses settings that would let anyone in: outside `DEV_MODE`, a short or shipped
/// `JWT_SECRET`; in `DEV_MODE` (tokens for anyone), an address other hosts reach unless
/// `DEV_MODE_PUBLIC` says so.
fn refuse_unsafe(config: &GatewayConfig) -> anyhow::Result<()> {
    // Whoever holds a key posts as anyone: a guessable one is refused even in DEV_MODE.
    if config.api_keys.iter().any(|key| key.len() < MIN_SECRET_LEN) {
        anyhow::bail!("every API_KEYS key must be at least {MIN_SECRET_LEN} bytes (random)");
    }
    let public_keys = config.jwt_public_key.is_some() || config.jwks_file.is_some();
    if config.dev_mode && public_keys {
        anyhow::bail!(
            "DEV_MODE mints HS256 tokens with JWT_SECRET: it cannot be used with JWT_PUBLIC_KEY or JWKS_FILE"
        );
    }
    if public_keys {
        // HS256 is not accepted then: the secret is not used.
        return Ok(());
    }
    if config.jwt_secret.is_empty() {
        anyhow::bail!("set JWT_SECRET (HS256), JWT_PUBLIC_KEY or JWKS_FILE: tokens need a key");
    }
    if config.dev_mode {
        if !config.listen.ip().is_loopback() && !config.dev_mode_public {
            anyhow::bail!(
                "DEV_MODE mints tokens for anyone: it listens on loopback only ({} is not), unless DEV_MODE_PUBLIC=true",
                config.listen
            );
        }
        return Ok(());
    }
    if config.jwt_secret.len() < MIN_SECRET_LEN {
        anyhow::bail!(
            "JWT_SECRET must be at least {MIN_SECRET_LEN} bytes (random) outside DEV_MODE"
        );
    }
    if SHIPPED_SECRETS.contains(&config.jwt_secret.as_str()) {
        anyhow::bail!("JWT_SECRET is a development default shipped with teamchat: set your own");
    }
    Ok(())
}

/// Connections waiting to be accepted. After a gateway restarts, its clients reconnect at
/// once: with the usual 1,024 a storm overflows the queue, dropped SYNs are retried only
/// after a second, and the storm's tail waits seconds (measured with `teamchat-bench
/// connect`). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8_192;

/// The loopback listener HTTP sessions reach the gateway on when it serves TLS: any free
/// port, on the loopback of the listening address's family.
fn bridge_addr(listening: SocketAddr) -> SocketAddr {
    match listening {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `work`, with a panic in it caught (counted, and logged by the panic hook): resolves to
/// its output, or `None` if it panicked. A session's closes its connection with 1011; a
/// room's closes its members with 1011 (`Room`'s drop) and the hub opens the team a fresh
/// room. (A combinator, not an `async fn`: it adds nothing to the connection's future.)
pub(crate) fn caught<T>(work: impl Future<Output = T>) -> impl Future<Output = Option<T>> {
    AssertUnwindSafe(work).catch_unwind().map(|outcome| {
        if outcome.is_err() {
            metrics::counter!(teamchat_shared::metrics::PANICS).increment(1);
        }
        outcome.ok()
    })
}
