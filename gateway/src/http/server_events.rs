//! `GET /v1/server/teams/{team}/events?from=N&to=M` (server API): a range of a team's
//! history as NDJSON, streamed as it is read — the team stream for what it holds, the
//! event archive for what it no longer does — one `{"team","offset","kind","seq","data"}`
//! per event, as `teamchat-worker export` writes it. Offsets held nowhere come as a line
//! `{"team","missing":{"from","to"}}`; a storage failure part-way ends the stream with a
//! line `{"error":{"code":"unavailable","message"}}`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use teamchat_shared::history::History;
use teamchat_shared::ids::is_valid_id;
use teamchat_shared::metrics as m;
use teamchat_shared::redis_conn::Redis;

use super::compress::StreamGzip;
use super::{AnyBody, json_error, server_api};
use crate::AppState;

/// Events read from storage per chunk written.
const PAGE: usize = 500;

/// Whether `path` is this endpoint's.
pub(super) fn path(path: &str) -> bool {
    matches!(
        path.strip_prefix("/v1/server/teams/")
            .and_then(|rest| rest.split_once('/')),
        Some((_, "events"))
    )
}

pub(super) async fn handle<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    gzip: bool,
) -> Response<AnyBody> {
    let (response, outcome) = match answer(state, req, gzip) {
        Ok(stream) => (stream.map(Either::Right), "ok"),
        Err(refused) => (refused.0.map(Either::Left), refused.1),
    };
    metrics::counter!(m::API_REQUESTS, "endpoint" => "events", "outcome" => outcome).increment(1);
    response
}

type EventsBody = super::fallback::sse::SseBody;

fn answer<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    gzip: bool,
) -> Result<Response<EventsBody>, Box<server_api::Answer>> {
    server_api::authorize(state, req)?;
    let bad = |message: &str| {
        let refused = json_error(StatusCode::BAD_REQUEST, "bad_request", message);
        Box::new((refused, "bad_request"))
    };
    let team = req
        .uri()
        .path()
        .strip_prefix("/v1/server/teams/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .unwrap_or_default()
        .to_owned();
    if !is_valid_id(&team) {
        return Err(bad("team is not a valid id"));
    }
    let (mut from, mut to) = (1, u64::MAX);
    let query = req.uri().query().unwrap_or_default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let offset = || value.parse::<u64>().ok().filter(|o| *o <= i64::MAX as u64);
        match key.as_ref() {
            "from" => {
                from = offset()
                    .ok_or_else(|| bad("from must be an offset"))?
                    .max(1)
            }
            "to" => to = offset().ok_or_else(|| bad("to must be an offset"))?,
            _ => {}
        }
    }
    let history = History::new(
        state.broker.connection(),
        state.broker.keys().clone(),
        state.db.clone(),
        team.clone(),
        from..=to,
        PAGE,
    );
    let reading = Reading {
        history,
        team,
        gzip: gzip.then(StreamGzip::default),
        done: false,
    };
    let stream = futures_util::stream::unfold(reading, next_chunk);
    let mut response = Response::new(StreamBody::new(Box::pin(stream) as _));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(response)
}

struct Reading {
    history: History<Redis>,
    team: String,
    gzip: Option<StreamGzip>,
    done: bool,
}

/// The next page's lines, read when the client has taken the previous ones.
async fn next_chunk(
    mut reading: Reading,
) -> Option<(Result<Frame<Bytes>, std::convert::Infallible>, Reading)> {
    if reading.done {
        return None;
    }
    let mut text = String::new();
    let mut line = |value: serde_json::Value| {
        text.push_str(&value.to_string());
        text.push('\n');
    };
    match reading.history.next_page().await {
        Ok(Some(page)) => {
            if let Some(missing) = page.missing {
                line(json!({"team": reading.team, "missing": {
                    "from": missing.start().to_string(), "to": missing.end().to_string()}}));
            }
            for event in page.events {
                let data: serde_json::Value =
                    serde_json::from_str(&event.data.encode()).unwrap_or_default();
                line(
                    json!({"team": event.team, "offset": event.offset.to_string(),
                            "kind": event.kind().as_str(), "seq": event.seq, "data": data}),
                );
            }
        }
        Ok(None) => reading.done = true,
        Err(error) => {
            tracing::warn!(team = reading.team, %error, "event export stopped: storage failed");
            line(json!({"error": {"code": "unavailable",
                                  "message": "storage failed part-way, retry from the last offset"}}));
            reading.done = true;
        }
    }
    let bytes = match (&mut reading.gzip, reading.done) {
        (Some(gzip), false) => gzip.chunk(text.as_bytes()),
        (Some(gzip), true) => gzip.last(text.as_bytes()),
        (None, _) => Bytes::from(text),
    };
    Some((Ok(Frame::data(bytes)), reading))
}
