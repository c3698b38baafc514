//! The HTTP server: accepts TCP connections, routes `/ws` upgrades to sessions
//! (`upgrade`) and the HTTP endpoints (history, credits, health, readiness, metrics,
//! development mode) to their handlers, and holds what every handler shares: the JSON
//! answers, the error shape, and the preamble of a token-authorized endpoint.

pub(crate) mod compress;
mod cors;
pub mod credits;
pub mod dev;
mod edits;
mod erase;
pub mod fallback;
pub mod history;
mod server_api;
mod server_events;
mod unread;
mod upgrade;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use teamchat_shared::ids::is_valid_id;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::AppState;
use crate::outlet::ConnectionSlot;
use crate::session::auth::{self, Claims};
use crate::session::limits::Operation;
use crate::transport::{self, Handshake};

pub type Body = Full<Bytes>;

/// A response's body: whole, or an SSE stream.
type AnyBody = Either<Body, fallback::sse::SseBody>;

/// The slot of an HTTP connection, until an upgrade takes it over.
type SlotHolder = Arc<Mutex<Option<ConnectionSlot>>>;

/// The largest request head read, in bytes (hyper's least): more is answered 431.
const MAX_HEAD: usize = 8_192;

/// Accepts connections until shutdown, with TLS when `tls` is given. Past
/// `MAX_CONNECTIONS` a connection is answered 503 and closed at once, before any parsing
/// (or handshake); a client that takes longer than `HEADER_TIMEOUT_MS` to finish the TLS
/// handshake or to send a request head (or idles that long between requests) is dropped.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    api_only: bool,
    tls: Option<TlsAcceptor>,
) {
    let header_timeout = Duration::from_millis(state.config.header_timeout_ms.max(1));
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
        let Ok(slot) = state.connection_slots.clone().try_acquire_owned() else {
            metrics::counter!(teamchat_shared::metrics::CONNECTIONS_REFUSED).increment(1);
            // Best effort, without waiting: the socket's buffer takes it (in clear, also
            // on the TLS port: a handshake is not worth its CPU when full).
            let _ = stream.try_write(FULL);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let slot: SlotHolder = Arc::new(Mutex::new(Some(slot)));
            let served = match tls {
                None => serve_connection(state, slot, api_only, stream, header_timeout).await,
                Some(tls) => match transport::handshake(&tls, stream, header_timeout).await {
                    Handshake::Done(stream) => {
                        serve_connection(state, slot, api_only, *stream, header_timeout).await
                    }
                    Handshake::Failed => return,
                },
            };
            if let Err(e) = served {
                debug!(error = %e, %peer, "HTTP connection ended");
            }
        });
    }
}

/// Serves HTTP/1.1 requests and upgrades on one connection until it ends.
async fn serve_connection<S>(
    state: Arc<AppState>,
    slot: SlotHolder,
    api_only: bool,
    stream: S,
    header_timeout: Duration,
) -> hyper::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| route(state.clone(), slot.clone(), api_only, req));
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
}

/// The answer to a connection past `MAX_CONNECTIONS`.
const FULL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

async fn route(
    state: Arc<AppState>,
    slot: SlotHolder,
    api_only: bool,
    req: Request<Incoming>,
) -> Result<Response<AnyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let gzip = compress::accepts_gzip(&req);
    // The server API: on `API_LISTEN` alone when it is set, else beside the rest.
    let server_api = path.starts_with("/v1/server/");
    if api_only || server_api {
        let served_here = api_only == state.config.api_listen.is_some();
        if server_api && served_here && req.method() == Method::GET && server_events::path(&path) {
            return Ok(server_events::handle(&state, &req, gzip).await);
        }
        let response = if server_api && served_here {
            server_api::handle(&state, req).await
        } else {
            json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        };
        return Ok(compress::whole(response, gzip).map(Either::Left));
    }
    // Pages on an allowed origin may call the HTTP API (history, credits) from the browser.
    let cors_origin = path
        .starts_with("/v1/")
        .then(|| cors::allowed_origin(&state.config, &req))
        .flatten();
    // The HTTP fallback lets an allowed origin's page send its cookie (EventSource can
    // set no header).
    let credentials = fallback::PATHS.contains(&path.as_str());
    if req.method() == Method::GET && path == "/v1/events" {
        return Ok(match fallback::sse::handle(&state, &req, gzip).await {
            Ok(stream) => cors::with_cors(stream, cors_origin, true).map(Either::Right),
            Err(refused) => cors::with_cors(*refused, cors_origin, true).map(Either::Left),
        });
    }
    let response = match (req.method(), path.as_str()) {
        (&Method::OPTIONS, p) if p.starts_with("/v1/") => {
            cors::preflight(cors_origin.is_some(), credentials)
        }
        (&Method::POST, "/v1/send") => fallback::send(&state, req).await,
        (&Method::POST, "/v1/poll/open") => fallback::poll::open_session(&state, &req).await,
        (&Method::GET, "/v1/poll") => fallback::poll::poll(&state, &req).await,
        (&Method::POST, "/v1/poll/close") => fallback::poll::close(&state, &req).await,
        (&Method::GET, "/ws") => upgrade::upgrade(state, req, &slot),
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
        (&Method::GET, "/v1/me/unread") => unread::handle(&state, &req).await,
        (&Method::POST, "/dev/token") if state.config.dev_mode => dev::token(&state, req).await,
        (&Method::GET, p) if state.config.dev_mode => dev::static_file(&state, p).await,
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    let response = compress::whole(response, gzip);
    Ok(cors::with_cors(response, cors_origin, credentials).map(Either::Left))
}

/// The preamble of an endpoint `{prefix}{id}{suffix}` that a user's token opens: the id
/// (a `what`: team, user) from the path (404 if the path does not fit, 400 if it is not a
/// valid id) and the token's claims (401). What the claims may see is the handler's to
/// check.
pub fn authorized<'a, B>(
    state: &AppState,
    req: &'a Request<B>,
    (prefix, what, suffix): (&str, &str, &str),
) -> Result<(&'a str, Claims), Box<Response<Body>>> {
    let id = req
        .uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))
        .map_err(Box::new)?;
    let claims = token_claims(state, req)?;
    if !is_valid_id(id) {
        let message = format!("{what} is not a valid id");
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &message,
        )));
    }
    Ok((id, claims))
}

/// The claims of the request's token (401 without a valid one), within the user's HTTP
/// rate limit (429).
pub fn token_claims<B>(state: &AppState, req: &Request<B>) -> Result<Claims, Box<Response<Body>>> {
    let claims = match auth::extract_token(req) {
        None => Err(auth::AuthError::Missing),
        // A cookie is sent by the browser on any page's behalf (a cross-site page could
        // spend the user's rate budget): a request a browser marks as coming from
        // another site uses it only from an allowed origin.
        Some((_, auth::TokenSource::Cookie)) if cors::from_another_site(&state.config, req) => {
            return Err(Box::new(json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "origin not allowed",
            )));
        }
        Some((token, _)) => state.verifier.verify(&token),
    };
    let claims = claims.map_err(|e| Box::new(unauthorized(e)))?;
    if let Err(wait) = state.rate_limits.check(Operation::Http, &claims.sub) {
        return Err(Box::new(rate_limited(wait)));
    }
    Ok(claims)
}

/// The 429 of a user over `RATE_HTTP_PER_MIN`, with when to retry.
fn rate_limited(wait: Duration) -> Response<Body> {
    metrics::counter!(teamchat_shared::metrics::RATE_LIMITED, "operation" => Operation::Http.label())
        .increment(1);
    let retry_after_ms = wait.as_millis().max(1) as u64;
    let mut response = json(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({
            "code": "rate_limited",
            "message": "rate limited, retry later",
            "retry_after_ms": retry_after_ms,
        }),
    );
    let seconds = retry_after_ms.div_ceil(1000).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// The 401 of a refused HTTP token.
/// What the server API recorded against a token: revoked (401), or removed from `team`
/// (403). Storage down: 503.
pub async fn check_access(
    state: &AppState,
    claims: &Claims,
    team: Option<&str>,
) -> Result<(), Box<Response<Body>>> {
    let issued = claims.issued_ms();
    match state.broker.access_records(&claims.sub, team).await {
        Ok(records) if records.revoked(issued) => {
            Err(Box::new(unauthorized(auth::AuthError::Revoked)))
        }
        Ok(records) if records.removed(issued) => Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "removed from the team",
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(Box::new(unavailable("access check", &e))),
    }
}

fn unauthorized(error: auth::AuthError) -> Response<Body> {
    metrics::counter!(teamchat_shared::metrics::AUTH_FAILURES, "reason" => error.label())
        .increment(1);
    json_error(StatusCode::UNAUTHORIZED, "unauthorized", error.reason())
}

/// The 503 of an endpoint whose storage did not answer (logged with what failed).
pub fn unavailable(what: &str, error: &dyn std::fmt::Display) -> Response<Body> {
    warn!(error = %error, "{what}: storage unavailable");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "storage unavailable, retry later",
    )
}

async fn ready(state: &AppState) -> Response<Body> {
    // Draining: a balancer checking over a kept-alive connection stops sending new
    // clients at once (the listener is closed to new connections already).
    if state.shutdown.is_cancelled() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"draining": true}),
        );
    }
    let limit = std::time::Duration::from_secs(1);
    let redis = matches!(
        tokio::time::timeout(limit, state.broker.ping()).await,
        Ok(Ok(()))
    );
    let postgres = matches!(
        tokio::time::timeout(limit, teamchat_shared::db::ping(&state.db)).await,
        Ok(Ok(()))
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

/// An HTTP error as docs/protocol.md gives it: `{"code","message"}`.
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
