//! `GET /ws`: the WebSocket handshake. The token is checked here; a bad one still
//! upgrades, so that the client learns why through the close code (4001/4003,
//! docs/protocol.md). The connection then belongs to a `session`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Request, Response, StatusCode};
use tracing::debug;

use super::{Body, cors, json_error};
use crate::outlet::ConnectionSlot;
use crate::protocol::Encoding;
use crate::session::{self, auth};
use crate::{AppState, deflate};

/// Upgrades to WebSocket; the connection's slot goes with it to the session.
pub fn upgrade(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    slot: &Mutex<Option<ConnectionSlot>>,
) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "WebSocket upgrade expected",
        );
    }
    let token = auth::extract_token(&req);
    // A cookie is sent by the browser on any page's behalf: only allowed origins use it.
    if let Some((_, auth::TokenSource::Cookie)) = &token
        && cors::allowed_origin(&state.config, &req).is_none()
    {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
    }
    let auth = match &token {
        Some((token, _)) => state.verifier.verify(token),
        None => Err(auth::AuthError::Missing),
    };
    let (encoding, echo) = choose_subprotocol(&req);
    let deflate = match state.config.ws_deflate {
        true => deflate::negotiate(
            req.headers()
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        false => None,
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let slot = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let sessions = state.sessions.clone();
    // The handshake completes once the 101 is written: a client that does not read it
    // does not hold the connection past the header timeout.
    let handshake = Duration::from_millis(state.config.header_timeout_ms.max(1));
    sessions.spawn(async move {
        match tokio::time::timeout(handshake, upgrade).await {
            Ok(Ok(ws)) => {
                let upgraded = ws.into_inner().into_inner();
                let deflate = deflate.is_some();
                session::run(state, upgraded, auth, encoding, deflate, slot).await;
            }
            Ok(Err(e)) => debug!(error = %e, "upgrade failed"),
            Err(_) => debug!("upgrade timed out"),
        }
    });
    let (mut parts, _) = response.into_parts();
    if echo {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    if let Some(answer) = deflate {
        parts
            .headers
            .insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(answer));
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
