//! `GET /v1/events?teams=a,b[&since=<team>:<epoch>:<offset>,…]`: an HTTP session's frames
//! as a Server-Sent Events stream. Each frame is one event (`event: <type>`, `data:` the
//! frame's JSON); durable events carry `id: <team>:<epoch>:<offset>`, so a browser's
//! reconnect (`Last-Event-ID`) resumes its team. A comment every 15 s keeps proxies from
//! closing an idle stream; the session's end is its last event, `session:closed` (with
//! `retry:` when the gateway drains).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{Request, Response, StatusCode};

use super::bridge::{Bridge, Kept};
use super::{Joins, Refused, open};
use crate::AppState;
use crate::http::compress::StreamGzip;
use crate::http::json_error;

/// The body of an SSE response.
pub type SseBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// How often an idle stream gets a comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What a browser waits before reconnecting after the gateway drained (1012).
const RETRY_AFTER_DRAIN_MS: u64 = 1_000;

/// With `gzip`, the stream is compressed, each chunk flushed.
pub async fn handle<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    gzip: bool,
) -> Result<Response<SseBody>, Refused> {
    let query = req.uri().query().unwrap_or_default();
    let mut teams = String::new();
    let mut since = String::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "teams" => teams = value.into_owned(),
            "since" => since = value.into_owned(),
            _ => {}
        }
    }
    // A browser's own reconnect names the last event it got (of one team): where that team
    // resumes, whatever `since` says of it.
    let last_event = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut joins = Joins::parse(teams.split(','), since.split(','))
        .map_err(|message| Box::new(json_error(StatusCode::BAD_REQUEST, "bad_request", message)))?;
    if let Ok(last) = Joins::parse([], [last_event.as_str()]) {
        joins.since.extend(last.since);
    }
    let bridge = open(state, req, joins).await?;
    bridge.attach(true);
    let stream = futures_util::stream::unfold(
        Streaming {
            bridge: Held(bridge, state.clone()),
            next: 0,
            done: false,
            gzip: gzip.then(StreamGzip::default),
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        },
        next_chunk,
    );
    let mut response = Response::new(StreamBody::new(Box::pin(stream) as Pin<Box<_>>));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(response)
}

/// A session held by a stream: let go of when the stream is dropped (the client went
/// away: it stops counting towards the user's limit at once, and lapses).
struct Held(Arc<Bridge>, Arc<AppState>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.attach(false);
        if self.0.detached_since().is_some() {
            super::uncount(&self.1, &self.0);
        }
    }
}

struct Streaming {
    bridge: Held,
    next: u64,
    done: bool,
    gzip: Option<StreamGzip>,
    keepalive: tokio::time::Interval,
}

/// The next piece of the stream: the frames kept since the last one, the session's end,
/// or a keep-alive comment.
async fn next_chunk(mut s: Streaming) -> Option<(Result<Frame<Bytes>, Infallible>, Streaming)> {
    if s.done {
        return None;
    }
    loop {
        let bridge = &s.bridge.0;
        let (frames, next) = bridge.frames_from(s.next);
        if !frames.is_empty() {
            // A stream has no acknowledgements: what it wrote is let go of.
            bridge.acknowledge(next);
            s.next = next;
            let mut text = render(&frames);
            // `session:closed` was the last: the stream ends (a browser reconnects sooner
            // after a drain).
            if bridge.finished(next) {
                s.done = true;
                if bridge.ended().is_some_and(|ended| ended.code == 1012) {
                    text.push_str(&format!("retry: {RETRY_AFTER_DRAIN_MS}\n\n"));
                }
            }
            let chunk = s.out(text.as_bytes());
            return Some((Ok(Frame::data(chunk)), s));
        }
        tokio::select! {
            _ = bridge.changed_since(s.next) => {}
            _ = s.keepalive.tick() => {
                let chunk = s.out(b": keep-alive\n\n");
                return Some((Ok(Frame::data(chunk)), s));
            }
        }
    }
}

impl Streaming {
    /// A chunk as it goes on the wire.
    fn out(&mut self, text: &[u8]) -> Bytes {
        match &mut self.gzip {
            Some(gzip) if self.done => gzip.last(text),
            Some(gzip) => gzip.chunk(text),
            None => Bytes::copy_from_slice(text),
        }
    }
}

/// Frames as SSE events. JSON from serde has no raw newline: each is one `data:` line.
fn render(frames: &[Kept]) -> String {
    let mut text = String::new();
    for frame in frames {
        text.push_str("event: ");
        text.push_str(&frame.kind);
        text.push('\n');
        if let Some(id) = &frame.event_id {
            text.push_str("id: ");
            text.push_str(id);
            text.push('\n');
        }
        text.push_str("data: ");
        text.push_str(&frame.json);
        text.push_str("\n\n");
    }
    text
}
