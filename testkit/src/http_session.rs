//! Clients of the HTTP fallback transports (docs/protocol.md, HTTP fallback): an SSE stream
//! read event by event, and a long-polling session; both send with `POST /v1/send`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::try_http;

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// An open SSE stream.
pub struct Sse {
    pub addr: SocketAddr,
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buffer: String,
    pub session: String,
    /// The token its sends carry.
    pub token: String,
    /// Comments (keep-alives) and `retry:` lines seen.
    pub comments: Vec<String>,
}

/// Opens `GET /v1/events?{query}` with `token` in the header (none when empty) and the
/// other headers; the stream once it answered 200, or the status and JSON body of a
/// refusal.
pub async fn sse(
    addr: SocketAddr,
    token: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, (u16, Value)> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("/v1/events?{query}"))
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if status != 200 {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        return Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    let mut sse = Sse {
        addr,
        status,
        headers,
        body: response.into_body(),
        buffer: String::new(),
        session: String::new(),
        token: token.to_owned(),
        comments: Vec::new(),
    };
    let welcome = sse.next().await;
    assert_eq!(welcome.event, "session:welcome");
    sse.session = welcome.data["session"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(sse)
}

impl Sse {
    /// The next event (comments are noted, not returned).
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(RECV_TIMEOUT, self.next_event())
            .await
            .expect("timed out waiting for an event")
            .expect("the stream ended")
    }

    /// The next event, however long it takes; `None` when the stream ends or fails.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = None;
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event.event = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("id: ") {
                        event.id = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(value).expect("data is JSON"));
                    } else if let Some(value) = line.strip_prefix("retry: ") {
                        self.comments.push(format!("retry {value}"));
                    }
                }
                match data {
                    Some(data) => {
                        event.data = data;
                        return Some(event);
                    }
                    None => continue,
                }
            }
            let Some(Ok(frame)) = self.body.frame().await else {
                return None;
            };
            if let Ok(data) = frame.into_data() {
                self.buffer
                    .push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// The next event of a type (others before it are skipped, presence changes among them).
    pub async fn expect(&mut self, kind: &str) -> Event {
        loop {
            let event = self.next().await;
            if event.event == kind {
                return event;
            }
            assert!(
                matches!(event.event.as_str(), "presence:update" | "presence:list"),
                "unexpected event {event:?} while waiting for {kind}"
            );
        }
    }

    /// Sends a frame on the session: the status and the direct reply.
    pub async fn send(&self, frame: Value) -> (u16, Value) {
        send(self.addr, &self.session, &self.token, frame).await
    }
}

/// `POST /v1/send?session=…` with `token` and the frame as the body.
pub async fn send(addr: SocketAddr, session: &str, token: &str, frame: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = try_http(
        addr,
        "POST",
        &format!("/v1/send?session={session}"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        serde_json::to_vec(&frame).unwrap(),
    )
    .await
    .expect("the gateway answers");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A long-polling session.
pub struct Poll {
    pub addr: SocketAddr,
    pub session: String,
    pub token: String,
    /// The `ack` of the next poll: every frame below it was received.
    pub next: u64,
    /// Frames received and not yet taken by `expect`.
    pending: std::collections::VecDeque<Value>,
    /// The session's `session:closed`, once a poll brought it.
    pub end: Option<Value>,
    /// A kept-alive connection for the polls, as a browser keeps one.
    conn: tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

/// `POST /v1/poll/open` with the token in the header: the session, or the refusal.
pub async fn poll_open(
    addr: SocketAddr,
    token: &str,
    teams: &[&str],
    since: &[String],
) -> Result<Poll, (u16, Value)> {
    let auth = format!("Bearer {token}");
    let path = format!(
        "/v1/poll/open?teams={}&since={}",
        teams.join(","),
        since.join(",")
    );
    let (status, _, body) = try_http(addr, "POST", &path, &[("authorization", &auth)], Vec::new())
        .await
        .expect("the gateway answers");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        return Err((status, body));
    }
    let mut poll = Poll {
        addr,
        session: body["session"].as_str().unwrap().to_owned(),
        token: token.to_owned(),
        next: 0,
        pending: Default::default(),
        end: None,
        conn: Default::default(),
    };
    poll.take(&body);
    let welcome = poll
        .pending
        .pop_front()
        .expect("the open's answer has the welcome");
    assert_eq!(welcome["type"], "session:welcome");
    assert_eq!(
        welcome["session"], body["session"],
        "the welcome names the HTTP session"
    );
    Ok(poll)
}

impl Poll {
    fn take(&mut self, answer: &Value) {
        let frames = answer["frames"].as_array().unwrap();
        self.next += frames.len() as u64;
        for frame in frames {
            if frame["type"] == "session:closed" {
                self.end = Some(frame.clone());
            }
        }
        self.pending.extend(frames.iter().cloned());
    }

    /// One poll with `ack`: the status and the answer as it came (not taken). Polls go
    /// over one kept-alive connection (opened again if it was closed).
    pub async fn poll_raw(&self, ack: u64) -> (u16, Value) {
        let path = format!("/v1/poll?session={}&ack={ack}", self.session);
        let mut conn = self.conn.lock().await;
        for _ in 0..2 {
            let sender = match conn.as_mut() {
                Some(sender) if !sender.is_closed() => sender,
                _ => {
                    let stream = tokio::net::TcpStream::connect(self.addr)
                        .await
                        .expect("connect");
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .expect("HTTP handshake");
                    tokio::spawn(connection);
                    conn.insert(sender)
                }
            };
            let req = hyper::Request::builder()
                .uri(&path)
                .header("host", self.addr.to_string())
                .header("authorization", format!("Bearer {}", self.token))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let Ok(response) = sender.send_request(req).await else {
                *conn = None;
                continue;
            };
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            return (status, serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
        panic!("the gateway does not answer polls");
    }

    /// Polls once with the current `ack` and takes the answer.
    pub async fn poll(&mut self) -> u16 {
        let (status, answer) = self.poll_raw(self.next).await;
        if status == 200 {
            self.take(&answer);
        }
        status
    }

    /// The next frame of a type, polling as needed (presence frames before it are skipped).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.expect_any().await;
            if frame["type"] == kind {
                return frame;
            }
            assert!(
                matches!(
                    frame["type"].as_str(),
                    Some("presence:update" | "presence:list")
                ),
                "unexpected frame {frame} while waiting for {kind}"
            );
        }
    }

    pub async fn send(&self, frame: Value) -> (u16, Value) {
        send(self.addr, &self.session, &self.token, frame).await
    }

    /// The next frame, whatever its type, polling as needed.
    pub async fn expect_any(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return frame;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for a frame"
            );
            let status = self.poll().await;
            assert_eq!(status, 200, "poll answered {status}");
        }
    }

    /// `POST /v1/poll/close`.
    pub async fn close(&self) -> u16 {
        let path = format!("/v1/poll/close?session={}", self.session);
        let auth = format!("Bearer {}", self.token);
        try_http(
            self.addr,
            "POST",
            &path,
            &[("authorization", &auth)],
            Vec::new(),
        )
        .await
        .expect("the gateway answers")
        .0
    }
}
