//! The worker's health endpoints: `/healthz` (the process runs) and `/readyz` (it can
//! reach PostgreSQL and Redis, i.e. it can sync; while it cannot, it acks nothing).

use std::convert::Infallible;
use std::net::SocketAddr;
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

/// Serves the endpoints until shutdown. Returns the bound address (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    db: PgPool,
    redis: redis::Client,
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
            let (db, redis) = (db.clone(), redis.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, db.clone(), redis.clone()));
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
    db: PgPool,
    redis: redis::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok".to_owned()),
        "/metrics" => (StatusCode::OK, teamchat_shared::metrics::install().render()),
        "/readyz" => {
            let limit = Duration::from_secs(1);
            let postgres = matches!(
                tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&db)).await,
                Ok(Ok(_))
            );
            let redis = matches!(tokio::time::timeout(limit, ping(&redis)).await, Ok(Ok(())));
            let status = if postgres && redis {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                status,
                serde_json::json!({"postgres": postgres, "redis": redis}).to_string(),
            )
        }
        _ => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

async fn ping(redis: &redis::Client) -> redis::RedisResult<()> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
}
