//! The HTTP server: accepts TCP connections, routes `/ws` upgrades to sessions and the
//! HTTP endpoints (history, health, readiness) to their handlers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL, VARY,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use teamchat_shared::protocol::Encoding;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::AppState;
use crate::auth::{self, TokenSource};
use crate::{credits, dev, history, session};

pub type Body = Full<Bytes>;

/// Accepts connections until shutdown.
pub async fn serve(state: Arc<AppState>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(state.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                debug!(error = %e, %peer, "HTTP connection ended");
            }
        });
    }
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    // Pages on an allowed origin may call the HTTP API (history, credits) from the browser.
    let cors_origin = path
        .starts_with("/v1/")
        .then(|| allowed_origin(&state, &req))
        .flatten();
    let response = match (req.method(), path.as_str()) {
        (&Method::OPTIONS, p) if p.starts_with("/v1/") => preflight(cors_origin.is_some()),
        (&Method::GET, "/ws") => upgrade(state, req),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Body::from(state.metrics.render()));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/readyz") => ready(&state).await,
        (&Method::GET, p) if p.starts_with("/v1/teams/") => history::handle(&state, &req).await,
        (&Method::GET, p) if p.starts_with("/v1/users/") => credits::handle(&state, &req).await,
        (&Method::POST, "/dev/token") if state.config.dev_mode => dev::token(&state, req).await,
        (&Method::GET, p) if state.config.dev_mode => dev::static_file(&state, p).await,
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    Ok(with_cors(response, cors_origin))
}

/// The request's `Origin`, if it is on `ALLOWED_ORIGINS`.
fn allowed_origin<B>(state: &AppState, req: &Request<B>) -> Option<HeaderValue> {
    let origin = req.headers().get(ORIGIN)?;
    let allowed = origin
        .to_str()
        .is_ok_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
    allowed.then(|| origin.clone())
}

/// The answer to a CORS preflight: the API is read with GET and a bearer token.
fn preflight(allowed: bool) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = if allowed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::FORBIDDEN
    };
    if allowed {
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization"),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

fn with_cors(mut response: Response<Body>, origin: Option<HeaderValue>) -> Response<Body> {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// The claims of an HTTP request's token (query, header or cookie).
pub fn http_claims<B>(state: &AppState, req: &Request<B>) -> Result<auth::Claims, auth::AuthError> {
    match auth::extract_token(req) {
        None => Err(auth::AuthError::Missing),
        Some((token, _)) => state.verifier.verify(&token),
    }
}

/// The 401 of a refused HTTP token.
pub fn unauthorized(error: auth::AuthError) -> Response<Body> {
    metrics::counter!(teamchat_shared::metrics::AUTH_FAILURES, "reason" => error.label())
        .increment(1);
    json_error(StatusCode::UNAUTHORIZED, "unauthorized", error.reason())
}

/// Upgrades to WebSocket. The token is checked here; a bad one still upgrades, so that the
/// client learns why through the close code (4001/4003), as PROTOCOL.md asks.
fn upgrade(state: Arc<AppState>, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "WebSocket upgrade expected",
        );
    }
    let token = auth::extract_token(&req);
    if let Some((_, TokenSource::Cookie)) = &token {
        let origin = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
        let allowed = origin.is_some_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
        }
    }
    let auth = match &token {
        Some((token, _)) => state.verifier.verify(token),
        None => Err(auth::AuthError::Missing),
    };
    let (encoding, echo) = choose_subprotocol(&req);
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let sessions = state.sessions.clone();
    sessions.spawn(async move {
        match upgrade.await {
            Ok(ws) => {
                let upgraded = ws.into_inner().into_inner();
                session::run(state, upgraded, auth, encoding).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let (mut parts, _) = response.into_parts();
    if echo {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    Response::from_parts(parts, Body::default())
}

/// The first offered subprotocol we speak; JSON (not echoed) when none is offered.
fn choose_subprotocol<B>(req: &Request<B>) -> (Encoding, bool) {
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|name| Encoding::from_subprotocol(name.trim()))
        .map_or((Encoding::Json, false), |encoding| (encoding, true))
}

async fn ready(state: &AppState) -> Response<Body> {
    let limit = std::time::Duration::from_secs(1);
    let redis = matches!(
        tokio::time::timeout(limit, state.broker.ping()).await,
        Ok(Ok(()))
    );
    let postgres = matches!(
        tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&state.db)).await,
        Ok(Ok(_))
    );
    let status = if redis && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({"redis": redis, "postgres": postgres}),
    )
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(
        serde_json::to_vec(value).expect("JSON values encode"),
    ));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// An HTTP error as PROTOCOL.md gives it: `{"code","message"}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"code": code, "message": message}),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}
