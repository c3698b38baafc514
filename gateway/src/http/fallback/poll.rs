//! Long-polling, for networks that buffer streamed responses. `POST /v1/poll/open?teams=…
//! [&since=…]` opens an HTTP session (the token as for history) and answers
//! `{"session","frames","next"}`; `GET /v1/poll?session=…&ack=<n>` lets go of the first
//! `n` frames and answers what follows, waiting up to 25 s for something. A response that
//! is lost is asked for again with the same `ack` and sent again: nothing is lost, nothing
//! doubled. `POST /v1/poll/close?session=…` ends the session.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::bridge::Bridge;
use super::{Joins, Refused, open, recount, session_of};
use crate::AppState;
use crate::http::{Body, json_error};

/// The longest a poll waits for a frame.
const POLL_WAIT: Duration = Duration::from_secs(25);

pub async fn open_session<B>(state: &Arc<AppState>, req: &Request<B>) -> Response<Body> {
    let mut teams = String::new();
    let mut since = String::new();
    for (key, value) in
        url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
    {
        match key.as_ref() {
            "teams" => teams = value.into_owned(),
            "since" => since = value.into_owned(),
            _ => {}
        }
    }
    let joins = match Joins::parse(teams.split(','), since.split(',')) {
        Ok(joins) => joins,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let bridge = match open(state, req, joins).await {
        Ok(bridge) => bridge,
        Err(refused) => return *refused,
    };
    answer(&bridge, 0, Some(&bridge.id)).0
}

/// `GET /v1/poll?session=…&ack=<n>`.
pub async fn poll<B>(state: &Arc<AppState>, req: &Request<B>) -> Response<Body> {
    let (id, ack) = match session_and_ack(req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let (bridge, issued_ms) = match session_of(state, req, &id) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let ack = ack.unwrap_or(0);
    if !bridge.acknowledge(ack) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "ack is past what was sent",
        );
    }
    bridge.attach(true);
    recount(state, &bridge, issued_ms).await;
    let ticket = bridge.new_poll();
    let _ = tokio::time::timeout(POLL_WAIT, bridge.poll_wait(ack, ticket)).await;
    bridge.attach(false);
    let (answer, told_end) = answer(&bridge, ack, None);
    // The end was told (every frame was taken): the session is gone from now on.
    if told_end {
        state.http_sessions.forget(&bridge.id);
    }
    answer
}

/// `POST /v1/poll/close?session=…`.
pub async fn close<B>(state: &Arc<AppState>, req: &Request<B>) -> Response<Body> {
    let (id, _) = match session_and_ack(req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let bridge = match session_of(state, req, &id) {
        Ok((bridge, _)) => bridge,
        Err(refused) => return *refused,
    };
    bridge.close();
    json_response(StatusCode::OK, "{\"closed\":true}".to_owned())
}

/// The frames from `from` on, and whether they end with the session's `session:closed`.
fn answer(bridge: &Bridge, from: u64, session: Option<&str>) -> (Response<Body>, bool) {
    let (frames, next) = bridge.frames_from(from);
    // The frames' JSON as it was kept, not parsed again.
    let mut text = String::from("{");
    if let Some(session) = session {
        text.push_str(&format!("\"session\":{},", json!(session)));
    }
    text.push_str("\"frames\":[");
    for (n, frame) in frames.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(&frame.json);
    }
    text.push_str(&format!("],\"next\":{next}}}"));
    (json_response(StatusCode::OK, text), bridge.finished(next))
}

fn json_response(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

fn session_and_ack<B>(req: &Request<B>) -> Result<(String, Option<u64>), Refused> {
    let mut session = None;
    let mut ack = None;
    for (key, value) in
        url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
    {
        match key.as_ref() {
            "session" => session = Some(value.into_owned()),
            "ack" => match value.parse::<u64>() {
                Ok(n) => ack = Some(n),
                Err(_) => {
                    return Err(Box::new(json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "ack must be a number",
                    )));
                }
            },
            _ => {}
        }
    }
    match session {
        Some(session) => Ok((session, ack)),
        None => Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "session is missing",
        ))),
    }
}
