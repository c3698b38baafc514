//! The HTTP fallback transports, for networks that break WebSocket (docs/protocol.md,
//! HTTP fallback): an SSE stream (`sse`), long-polling (`poll`), and `POST /v1/send` for
//! what a client sends. An HTTP session is a WebSocket session of this gateway opened
//! over loopback (`bridge`), so it has every guarantee and limit a socket has; the
//! registry here finds it by id, and ends it when no stream or poll came back for two
//! heartbeats.

mod bridge;
pub mod poll;
pub mod sse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use self::bridge::{Bridge, OpenError};
use super::{Body, cors, json, json_error};
use crate::AppState;
use crate::broker::ConnectionOpen;
use crate::session::auth::{self, AuthError};

/// A refused request's answer (boxed: it is large beside what succeeds).
type Refused = Box<Response<Body>>;

/// The paths of the HTTP fallback.
pub const PATHS: &[&str] = &[
    "/v1/events",
    "/v1/poll/open",
    "/v1/poll",
    "/v1/poll/close",
    "/v1/send",
];

/// The open HTTP sessions of this gateway, by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<Arc<str>, Arc<Bridge>>>,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<Arc<Bridge>> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Bridge>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The answer to a request for a session this gateway does not have (ended, or opened on
/// another gateway): the client opens a new one with `since`.
fn session_gone() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "session_gone",
        "no such session here; open a new one with since",
    )
}

/// The teams an HTTP session joins at once, and where each resumes.
pub struct Joins {
    pub teams: Vec<String>,
    /// Team → (epoch, offset).
    pub since: HashMap<String, (String, String)>,
}

impl Joins {
    /// `teams` comma-separated; `since` entries `<team>:<epoch>:<offset>` (a team id may
    /// hold `:`, an epoch and an offset never do).
    pub fn parse<'a>(
        teams: impl IntoIterator<Item = &'a str>,
        since: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, &'static str> {
        let teams: Vec<String> = teams
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if teams.iter().any(|t| !teamchat_shared::ids::is_valid_id(t)) {
            return Err("teams must be valid ids");
        }
        let mut positions = HashMap::new();
        for entry in since.into_iter().filter(|s| !s.is_empty()) {
            let mut parts = entry.rsplitn(3, ':');
            let (Some(offset), Some(epoch), Some(team)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err("since entries are <team>:<epoch>:<offset>");
            };
            let offset_ok = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
            let epoch_ok = !epoch.is_empty()
                && epoch.len() <= 64
                && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
            if !offset_ok || !epoch_ok || !teamchat_shared::ids::is_valid_id(team) {
                return Err("since entries are <team>:<epoch>:<offset>");
            }
            positions.insert(team.to_owned(), (epoch.to_owned(), offset.to_owned()));
        }
        Ok(Joins {
            teams,
            since: positions,
        })
    }
}

/// The session a poll or send names, for the request's token (the open's, or the one a
/// `token:refresh` gave): the same user's, valid. With the token's issue time (ms).
fn session_of<B>(
    state: &AppState,
    req: &Request<B>,
    id: &str,
) -> Result<(Arc<Bridge>, u64), Refused> {
    let claims = token_of(state, req)?.1;
    let bridge = state
        .http_sessions
        .get(id)
        .ok_or_else(|| Box::new(session_gone()))?;
    if bridge.user != claims.sub {
        return Err(Box::new(super::unauthorized(AuthError::Invalid)));
    }
    Ok((bridge, claims.issued_ms()))
}

/// The request's token, taken as for history (query, header, or cookie under the Origin
/// rule), and its claims.
fn token_of<B>(state: &AppState, req: &Request<B>) -> Result<(String, auth::Claims), Refused> {
    let token = match auth::extract_token(req) {
        None => return Err(Box::new(super::unauthorized(AuthError::Missing))),
        Some((_, auth::TokenSource::Cookie)) if cors::from_another_site(&state.config, req) => {
            return Err(Box::new(json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "origin not allowed",
            )));
        }
        Some((token, _)) => token,
    };
    let claims = state
        .verifier
        .verify(&token)
        .map_err(|e| Box::new(super::unauthorized(e)))?;
    Ok((token, claims))
}

/// Opens an HTTP session for the request's token (taken as for history: query, header,
/// or cookie under the Origin rule), joins its teams, and registers it.
async fn open<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    joins: Joins,
) -> Result<Arc<Bridge>, Refused> {
    let (token, claims) = token_of(state, req)?;
    if let Some(team) = joins.teams.iter().find(|team| !claims.may_read(team)) {
        let message = format!("team {team} not in token");
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &message,
        )));
    }
    // The token goes into a header of the loopback request: a JWT is base64url and dots.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    {
        return Err(Box::new(super::unauthorized(AuthError::Invalid)));
    }
    let limits = (
        state.config.send_queue.max(2),
        state.config.send_queue_bytes.max(1) as usize,
    );
    let bridge = match Bridge::open(loopback(state.addr), &token, claims.sub, limits).await {
        Ok(bridge) => bridge,
        Err(OpenError::Closed(ended)) => {
            return Err(Box::new(match ended.code {
                4029 => json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    "too many connections",
                ),
                4001 | 4003 => {
                    let code = if ended.code == 4003 {
                        "token_expired"
                    } else {
                        "unauthorized"
                    };
                    json_error(StatusCode::UNAUTHORIZED, code, &ended.reason)
                }
                _ => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &ended.reason,
                ),
            }));
        }
        Err(OpenError::Failed(why)) => {
            return Err(Box::new(super::unavailable("HTTP session", &why)));
        }
    };
    state
        .http_sessions
        .lock()
        .insert(bridge.id.clone(), bridge.clone());
    tokio::spawn(watch(state.clone(), bridge.clone()));
    for team in joins.teams {
        let mut join = Map::new();
        join.insert("type".into(), "room:join".into());
        if let Some((epoch, offset)) = joins.since.get(&team) {
            join.insert("since".into(), json!({"epoch": epoch, "offset": offset}));
        }
        join.insert("team".into(), team.into());
        // A session that ended at once is reported by its stream or poll.
        let _ = bridge.write(join, false).await;
    }
    Ok(bridge)
}

/// Where the gateway reaches itself: its listening address, loopback when it listens on
/// all interfaces.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// A session nothing held this long stops counting towards the user's connection limit
/// (its client may be opening a new one); polls come back well within it.
const UNCOUNT_AFTER: Duration = Duration::from_secs(1);

/// Ends a session no stream or poll came back to within two heartbeats (as a silent
/// socket is), and forgets it once it ended and nothing holds it. Meanwhile it does not
/// count towards the user's connection limit.
async fn watch(state: Arc<AppState>, bridge: Arc<Bridge>) {
    let grace = Duration::from_millis(state.config.heartbeat_ms.max(100) * 2);
    let tick = (grace / 4).min(UNCOUNT_AFTER / 2);
    loop {
        tokio::time::sleep(tick).await;
        let detached = bridge.detached_since();
        if bridge.ended().is_some() {
            if detached.is_some() {
                state.http_sessions.forget(&bridge.id);
                return;
            }
            continue;
        }
        let Some(since) = detached else { continue };
        if since.elapsed() >= grace {
            bridge.close();
        } else if since.elapsed() >= UNCOUNT_AFTER {
            uncount(&state, &bridge);
        }
    }
}

/// The session stops counting towards its user's connection limit.
pub(super) fn uncount(state: &Arc<AppState>, bridge: &Arc<Bridge>) {
    let Some(inner) = bridge.inner_session.get().cloned() else {
        return;
    };
    if !bridge.counted.swap(false, Ordering::AcqRel) {
        return;
    }
    state.connections.set_counted(&inner, false);
    let state = state.clone();
    let user = bridge.user.clone();
    tokio::spawn(async move {
        if let Err(e) = state.broker.connection_close(&user, &inner).await {
            tracing::debug!(error = %e, "HTTP session: left to expire from the count");
        }
    });
}

/// A poll came back to a session that stopped counting: it counts again, unless the user
/// opened their limit's worth meanwhile (the session ends 4029) or the token was revoked
/// (4001).
async fn recount(state: &AppState, bridge: &Bridge, issued_ms: u64) {
    let Some(inner) = bridge.inner_session.get() else {
        return;
    };
    if bridge.counted.load(Ordering::Acquire) {
        return;
    }
    let (limit, ttl) = (
        state.config.max_connections_per_user,
        state.config.presence_ttl_ms,
    );
    let opened = state
        .broker
        .connection_open(&bridge.user, inner, limit, ttl, issued_ms)
        .await;
    match opened {
        Ok(ConnectionOpen::OverLimit) => {
            bridge.end(4029, "too many connections");
            bridge.close();
        }
        Ok(ConnectionOpen::Revoked) => {
            bridge.end(4001, "revoked");
            bridge.close();
        }
        // Counted again (or Redis is away: the limit is not worth refusing service for).
        Ok(ConnectionOpen::Opened) | Err(_) => {
            bridge.counted.store(true, Ordering::Release);
            state.connections.set_counted(inner, true);
        }
    }
}

/// Reply-less requests: their answer, if any (an error), comes on the stream.
const NO_REPLY: &[&str] = &["typing:start", "typing:stop", "receipt:update", "room:join"];

/// How long `POST /v1/send` waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /v1/send?session=…` with one client frame as the body: answers its direct reply
/// (`message:ack`, `error`, `pong`, `token:refreshed`, `room:left`), or 204 for a frame
/// whose answer, if any, comes on the stream (`room:join`; typing and receipts' errors).
pub async fn send(state: &Arc<AppState>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    use http_body_util::{BodyExt, Limited};
    let id = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "session")
        .map(|(_, id)| id.into_owned())
        .unwrap_or_default();
    let bridge = match session_of(state, &req, &id) {
        Ok((bridge, _)) => bridge,
        Err(refused) => return *refused,
    };
    let limit = state.config.max_frame;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "frame over max_frame",
            );
        }
    };
    let Ok(Value::Object(frame)) = serde_json::from_slice::<Value>(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be one JSON object",
        );
    };
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reply = !NO_REPLY.contains(&kind);
    let answer = match bridge.write(frame, reply).await {
        Err(_) => return session_gone(),
        Ok(None) => {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::NO_CONTENT;
            return response;
        }
        Ok(Some(answer)) => answer,
    };
    match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
        Ok(Ok(reply)) => json(StatusCode::OK, &reply),
        // The session ended meanwhile (a refresh with a bad token closes it, as a socket).
        Ok(Err(_)) => session_gone(),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no reply in time",
        ),
    }
}
