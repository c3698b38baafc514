//! The worker's endpoints: `/healthz` (the process runs), `/readyz` (migrations applied and
//! PostgreSQL and Redis reachable, i.e. it can sync; while it cannot, it acks nothing) and
//! `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    pub db: PgPool,
    pub redis: teamchat_shared::config::RedisArgs,
    /// Set once the migrations are applied, so nothing relies on a schema not there yet.
    pub migrated: Arc<AtomicBool>,
}

/// Serves the endpoints until shutdown. Returns the bound address (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = shutdown.cancelled() => return,
            };
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, readiness.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    readiness: Readiness,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok".to_owned()),
        "/metrics" => (StatusCode::OK, teamchat_shared::metrics::install().render()),
        "/readyz" => {
            let limit = Duration::from_secs(1);
            let query = sqlx::query("SELECT 1").execute(&readiness.db);
            let postgres = matches!(tokio::time::timeout(limit, query).await, Ok(Ok(_)));
            let redis = matches!(
                tokio::time::timeout(limit, ping(&readiness.redis)).await,
                Ok(Ok(()))
            );
            let migrated = readiness.migrated.load(Ordering::Relaxed);
            let ready = postgres && redis && migrated;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                status,
                serde_json::json!({"postgres": postgres, "redis": redis, "migrated": migrated})
                    .to_string(),
            )
        }
        _ => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

async fn ping(redis: &teamchat_shared::config::RedisArgs) -> redis::RedisResult<()> {
    redis.ping().await
}
