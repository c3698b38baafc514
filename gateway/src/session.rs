//! One client connection after the upgrade: welcome, then read frames and carry out
//! requests in order; replies and room events go out through the connection's `Outlet`
//! (see `writer`).

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use teamchat_shared::event::{ActorData, EditData, Ephemeral, EventData, MessageData};
use teamchat_shared::protocol::{
    self, ClientFrame, Encoding, ErrorCode, Limits, Request, RequestError, ServerFrame,
};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::AppState;
use crate::auth::{AuthError, Claims};
use crate::broker::AppendOutcome;
use crate::limits::Operation;
use crate::receipts;
use crate::room::{Join, Member, Who};
use crate::writer::{Outbound, Outlet, StopReading};
use teamchat_shared::metrics as m;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long a closing connection waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The per-connection state the reader keeps.
struct Session {
    state: Arc<AppState>,
    /// Boxed: the session state is part of every idle connection's future.
    claims: Box<Claims>,
    /// Session id, user id and name, shared with the connection's member entries.
    who: Arc<Who>,
    conn_id: u64,
    encoding: Encoding,
    outlet: Outlet,
    joined: Teams,
    /// Teams this connection is typing in, so leaving or closing sends `typing:stop`.
    typing: Teams,
    /// When the token (with leeway) expires: the connection closes 4003 unless refreshed.
    expires_at: Instant,
    /// Times of recent `bad_request`/`unknown_type` errors (close 1008 past the limit).
    violations: Vec<Instant>,
    /// A close a request asked for.
    close_with: Option<CloseAsked>,
    /// Started at the first `receipt:update`.
    receipts: Option<receipts::Coalescer>,
}

/// Why a request asked for the connection to close (a byte, not a code and a reason: the
/// session state is part of every idle connection's future).
#[derive(Clone, Copy)]
enum CloseAsked {
    /// `token:refresh` with a token that is not valid.
    BadToken(AuthError),
    /// `token:refresh` with another user's token.
    OtherUser,
    /// Too many protocol violations within a minute.
    Violations,
}

impl CloseAsked {
    fn flow(self) -> Flow {
        match self {
            CloseAsked::BadToken(error) => Flow::Close(error.close_code(), error.reason()),
            CloseAsked::OtherUser => Flow::Close(4001, "token of another user"),
            CloseAsked::Violations => Flow::Close(1008, "too many protocol violations"),
        }
    }
}

/// A connection's teams (joined, typing in): a few names in a list, smaller than a set
/// in every connection and as quick to search at this size.
#[derive(Default)]
struct Teams(Vec<String>);

impl Teams {
    fn contains(&self, team: &str) -> bool {
        self.0.iter().any(|t| t == team)
    }

    fn insert(&mut self, team: String) {
        if !self.contains(&team) {
            // Grown one at a time: most connections hold one or two teams.
            self.0.reserve_exact(1);
            self.0.push(team);
        }
    }

    /// Whether the team was there.
    fn remove(&mut self, team: &str) -> bool {
        let index = self.0.iter().position(|t| t == team);
        index.map(|index| self.0.swap_remove(index)).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl IntoIterator for Teams {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// What the read loop does after a frame.
enum Flow {
    Continue,
    /// Send a close with this code and wait (briefly) for it to be written.
    Close(u16, &'static str),
    /// The peer sent a close (echoed already): wait (briefly) for the echo to be written.
    PeerClosed,
    /// Stop reading; the outlet closes (1013) or has closed.
    Stop,
}

/// What a connection reads frames from: its socket (bytes hyper read past the handshake
/// are put in the reader's buffer first).
type Reader = fastwebsockets::WebSocketRead<OwnedReadHalf>;

/// Opens a connection after the upgrade (authentication, the per-user limit, welcome),
/// then hands it to a task of its own that reads it until it closes: the task that lives
/// as long as the connection carries none of the opening's state.
pub async fn run(
    state: Arc<AppState>,
    upgraded: Upgraded,
    auth: Result<Claims, AuthError>,
    encoding: Encoding,
) {
    if let Some((session, ws)) = open(state, upgraded, auth, encoding).await {
        let sessions = session.state.sessions.clone();
        let serving = session.serve(ws);
        // Every idle connection is this future in a task of 128-byte steps: at 648 bytes
        // (release, `-Zprint-type-sizes`) the task is 768 (docs/performance.md); past 656
        // it is 896. The tests run this check on debug builds.
        debug_assert!(
            std::mem::size_of_val(&serving) <= 656,
            "a connection's future grew to {} bytes",
            std::mem::size_of_val(&serving)
        );
        sessions.spawn(serving);
    }
}

/// The opening: `None` when the connection was refused (and closed).
async fn open(
    state: Arc<AppState>,
    upgraded: Upgraded,
    auth: Result<Claims, AuthError>,
    encoding: Encoding,
) -> Option<(Session, Reader)> {
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            warn!("upgraded connection is not a TCP stream");
            return None;
        }
    };
    let (read, write) = parts.io.into_inner().into_split();
    // Bytes the client sent right after its handshake may already sit in hyper's buffer:
    // they are copied into the frame reader's buffer (a slice would keep hyper's whole
    // read buffer alive for the connection's lifetime).
    let early = parts.read_buf;
    let outlet = Outlet::new(write, encoding, state.config.send_queue.max(2));

    let claims = match auth {
        Ok(claims) => claims,
        Err(error) => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => error.label()).increment(1);
            // The queue is new: there is room.
            let _ = outlet.try_send(Outbound::close(error.close_code(), error.reason()));
            let_close(outlet).await;
            return None;
        }
    };

    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let session_id: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
    let user: Arc<str> = claims.sub.as_str().into();
    let ttl = state.config.presence_ttl_ms;
    let limit = state.config.max_connections_per_user;
    match state
        .broker
        .connection_open(&user, &session_id, limit, ttl)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let _ = outlet.try_send(Outbound::close(4029, "too many connections"));
            let_close(outlet).await;
            return None;
        }
        // The limit protects; it is not worth refusing service while Redis is away.
        Err(e) => warn!(error = %e, "connection limit not checked: Redis unavailable"),
    }
    state
        .connections
        .register(session_id.clone(), user.clone(), outlet.clone());
    // A shutdown that began before this registration did not see it.
    if state.shutdown.is_cancelled() {
        outlet.shut_down();
    }
    let welcome = ServerFrame::Welcome {
        user: claims.sub.clone(),
        session: session_id.to_string(),
        heartbeat_ms: state.config.heartbeat_ms,
        max_frame: state.config.max_frame,
    };
    let _ = outlet.try_send(Outbound::own(welcome));
    metrics::counter!(m::CONNECTS).increment(1);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);

    let who = Arc::new(Who {
        session: session_id,
        user,
        name: claims.name.clone(),
    });
    let mut session = Session {
        state,
        claims: Box::new(claims),
        who,
        conn_id,
        encoding,
        outlet,
        joined: Teams::default(),
        typing: Teams::default(),
        expires_at: Instant::now(),
        violations: Vec::new(),
        close_with: None,
        receipts: None,
    };
    session.expires_at = session.token_deadline(session.claims.exp);
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.push_buffered(&early);
    drop(early);
    ws.set_max_message_size(session.state.config.max_frame + 1);
    // Pings are answered in `on_frame`, so that read_frame returns them and they count as
    // traffic for the heartbeat.
    ws.set_auto_pong(false);
    Some((session, ws))
}

/// Gives the close a moment to be written (a peer that never reads cannot hold it).
async fn let_close(outlet: Outlet) {
    if tokio::time::timeout(CLOSE_GRACE, outlet.ended())
        .await
        .is_err()
    {
        outlet.abandon();
    }
}

impl Drop for Session {
    /// However the reader stops (even by a panic), sending ends once what is queued is
    /// written, and the registry of open connections lets go of the connection.
    fn drop(&mut self) {
        self.outlet.end();
        self.state.connections.forget(&self.who.session);
    }
}

impl Session {
    /// Reads the connection until it closes, then lets go of it. Everything held across
    /// the read loop's awaits is part of every idle connection: the closing is boxed, and
    /// this is an `async` block, not an `async fn`, whose future would hold its arguments
    /// twice (as captured and as moved into its body: 360 bytes more per connection).
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    fn serve(mut self, mut ws: Reader) -> impl Future<Output = ()> + Send {
        async move {
            self.read_loop(&mut ws).await;
            Box::pin(self.finish()).await;
        }
    }

    /// After the read loop: typing stopped, rooms left, the connection forgotten, and
    /// what is queued given a moment to be written (a peer that never reads cannot hold
    /// it).
    async fn finish(mut self) {
        for team in std::mem::take(&mut self.typing) {
            self.publish_typing(&team, Ephemeral::TypingStop).await;
        }
        for team in std::mem::take(&mut self.joined) {
            self.state
                .hub
                .leave(&team, self.conn_id, self.who.session.clone(), None, None);
        }
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        let state = self.state.clone();
        state.connections.forget(&self.who.session);
        if let Err(e) = state
            .broker
            .connection_close(&self.who.user, &self.who.session)
            .await
        {
            debug!(error = %e, "connection entry left to expire");
        }
        let outlet = self.outlet.clone();
        // Sending ends once what is queued is written (the session's drop ends it).
        drop(self);
        let_close(outlet).await;
    }

    /// Reads frames and carries out requests until the connection is to close. What is
    /// live across this loop's awaits is in every idle connection: the work on a frame is
    /// boxed (`on_frame`), and a close is queued at one place.
    #[allow(clippy::manual_async_fn)] // not an `async fn`, which holds its arguments twice
    fn read_loop<'a>(&'a mut self, ws: &'a mut Reader) -> impl Future<Output = ()> + Send + 'a {
        async move {
            // Fragments are collected here, not by fastwebsockets' collector, so that a
            // message's total size is capped while it arrives (1009), not only its frames'.
            // Boxed: fragmented messages are rare.
            let mut partial: Option<Box<Vec<u8>>> = None;
            let control = self.outlet.clone();
            // Pongs and close echoes the reader owes go through the outlet; a peer that does
            // not read them is too slow like any other (1013).
            let mut obligated = move |frame: Frame<'_>| {
                let payload = Bytes::copy_from_slice(&frame.payload);
                let queued = control.try_send(Outbound::control(frame.opcode, payload));
                std::future::ready(
                    queued.map_err(|_| std::io::Error::other("send queue unavailable")),
                )
            };
            // One timer for the pings, the peer's silence and the token's expiry, moved lazily:
            // a frame only notes when it came, and the timer, when it fires early, is set again.
            let mut heard = Instant::now();
            let mut next_ping = heard + self.heartbeat();
            let deadline = tokio::time::sleep_until(self.expires_at.min(next_ping));
            tokio::pin!(deadline);
            let flow = loop {
                // The next frame, or why the connection closes without one.
                let frame = {
                    // Kept across the timer's wake-ups: a frame half read is not dropped.
                    let read = async {
                        // fastwebsockets reserves a read buffer as soon as it reads: with
                        // nothing buffered, wait for the socket first, so an idle connection
                        // holds no buffer.
                        // (Polled for readiness, not `readable()`, whose future is 168 bytes.)
                        if !ws.has_buffered() {
                            let socket: &TcpStream = ws.get_ref().as_ref();
                            poll_fn(|cx| socket.poll_read_ready(cx))
                                .await
                                .map_err(WebSocketError::IoError)?;
                        }
                        ws.read_frame(&mut obligated).await
                    };
                    tokio::pin!(read);
                    loop {
                        tokio::select! {
                            frame = &mut read => break Ok(frame),
                            _ = &mut deadline => {
                                let now = Instant::now();
                                if now >= self.expires_at {
                                    break Err(Flow::Close(4003, "token expired"));
                                }
                                if now >= heard + self.silence() {
                                    break Err(Flow::Close(4000, "no heartbeat"));
                                }
                                if now >= next_ping {
                                    if self.outlet.try_send(Outbound::Ping).is_err() {
                                        break Err(Flow::Stop);
                                    }
                                    next_ping = now + self.heartbeat();
                                }
                                let due = self.expires_at.min(heard + self.silence()).min(next_ping);
                                deadline.as_mut().reset(due);
                            }
                            stop = self.outlet.stop_reading() => break Err(match stop {
                                // Drain: between requests, so what was accepted is answered first.
                                StopReading::ShutDown => Flow::Close(1012, "gateway restarting"),
                                // A close was written (too slow, stream reset), or the socket failed.
                                StopReading::Ended => Flow::Stop,
                            }),
                        }
                    }
                };
                heard = Instant::now();
                let flow = match frame {
                    Ok(Ok(frame)) => Box::pin(self.on_frame(frame, &mut partial)).await,
                    Ok(Err(WebSocketError::FrameTooLarge)) => Flow::Close(1009, "frame too large"),
                    Ok(Err(e)) => {
                        debug!(error = %e, "connection read ended");
                        Flow::Close(1002, "protocol error")
                    }
                    Err(flow) => flow,
                };
                if !matches!(flow, Flow::Continue) {
                    break flow;
                }
                // A refreshed token may expire sooner than the timer is set for.
                if self.expires_at < deadline.deadline() {
                    deadline.as_mut().reset(self.expires_at);
                }
            };
            // Boxed: its timer would otherwise widen every idle connection's future.
            Box::pin(self.closing(flow)).await;
        }
    }

    /// How often the gateway pings (computed, not kept: see `read_loop`).
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.state.config.heartbeat_ms.max(100))
    }

    /// How long a silent peer is kept: two heartbeats.
    fn silence(&self) -> Duration {
        self.heartbeat() * 2
    }

    /// Sends the close the read loop ended with, or waits (briefly) for the echo of the
    /// peer's close to be written.
    async fn closing(&self, flow: Flow) {
        match flow {
            Flow::Close(code, reason) => self.close(code, reason).await,
            // The close echo is already queued by the obligated send.
            Flow::PeerClosed => {
                let _ = tokio::time::timeout(CLOSE_GRACE, self.outlet.ended()).await;
            }
            Flow::Continue | Flow::Stop => {}
        }
    }

    /// Works on one frame: collects fragments, carries out a complete request and queues
    /// its reply, answers a ping.
    #[allow(clippy::box_collection)] // one word in every idle connection's future, not three
    async fn on_frame(&mut self, frame: Frame<'_>, partial: &mut Option<Box<Vec<u8>>>) -> Flow {
        let max_frame = self.state.config.max_frame;
        let message = match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let first = frame.opcode != OpCode::Continuation;
                if first == partial.is_some() {
                    return Flow::Close(1002, "bad fragmentation");
                }
                if frame.fin && partial.is_none() {
                    // A whole message in one frame, the usual case: nothing to collect.
                    if frame.payload.len() > max_frame {
                        return Flow::Close(1009, "frame too large");
                    }
                    Some(frame.payload.to_vec())
                } else {
                    let collected = partial.get_or_insert_with(Box::default);
                    if collected.len() + frame.payload.len() > max_frame {
                        return Flow::Close(1009, "frame too large");
                    }
                    collected.extend_from_slice(&frame.payload);
                    if frame.fin {
                        partial.take().map(|collected| *collected)
                    } else {
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(message) = message {
            let limits = Limits {
                max_body: self.state.config.max_body,
                max_meta: self.state.config.max_meta,
            };
            let reply = match protocol::decode_client(&message, self.encoding, limits) {
                Ok(request) => self.handle(request).await,
                Err(error) => {
                    self.count_violation(error.code);
                    Some(error.into_frame())
                }
            };
            if let Some(reply) = reply {
                metrics::counter!(m::EVENTS_OUT, "type" => reply.kind()).increment(1);
                // A peer that sends requests but does not read their replies fills its
                // queue like any slow reader: 1013.
                if self.outlet.try_send(Outbound::own(reply)).is_err() {
                    return Flow::Stop;
                }
            }
            return self.close_with.map_or(Flow::Continue, CloseAsked::flow);
        }
        match frame.opcode {
            OpCode::Ping => {
                let pong = Outbound::control(OpCode::Pong, Bytes::copy_from_slice(&frame.payload));
                if self.outlet.try_send(pong).is_err() {
                    return Flow::Stop;
                }
                Flow::Continue
            }
            OpCode::Close => Flow::PeerClosed,
            _ => Flow::Continue,
        }
    }

    /// Sends a close frame and waits (briefly) for it to be written.
    async fn close(&self, code: u16, reason: &'static str) {
        // A full queue (the peer is not reading) closes with 1013 instead.
        let _ = self.outlet.try_send(Outbound::close(code, reason));
        let _ = tokio::time::timeout(CLOSE_GRACE, self.outlet.ended()).await;
    }

    /// Carries out one request; returns the direct reply the reader queues, if any.
    async fn handle(&mut self, frame: ClientFrame) -> Option<ServerFrame> {
        let ClientFrame { rid, request } = frame;
        metrics::counter!(m::EVENTS_IN, "type" => request.kind()).increment(1);
        let operation = match &request {
            Request::MessageSend { .. }
            | Request::MessageEdit { .. }
            | Request::MessageDelete { .. } => Some(Operation::Send),
            Request::TypingStart { .. } | Request::TypingStop { .. } => Some(Operation::Typing),
            Request::RoomJoin { .. } => Some(Operation::Join),
            _ => None,
        };
        if let Some(operation) = operation
            && let Err(wait) = self.state.rate_limits.check(operation, &self.claims.sub)
        {
            metrics::counter!(m::RATE_LIMITED, "operation" => operation.label()).increment(1);
            let (room, team) = match &request {
                Request::RoomJoin { team, .. } => (true, Some(team.clone())),
                Request::MessageSend { team, .. }
                | Request::MessageEdit { team, .. }
                | Request::MessageDelete { team, .. }
                | Request::TypingStart { team }
                | Request::TypingStop { team } => (false, Some(team.clone())),
                _ => (false, None),
            };
            let error = RequestError {
                rid,
                team,
                room,
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                ..RequestError::new(ErrorCode::RateLimited, "rate limited, retry later")
            };
            return Some(error.into_frame());
        }
        let result = match request {
            Request::Ping => return Some(ServerFrame::Pong { rid }),
            Request::TokenRefresh { token } => return self.refresh_token(&token, rid),
            Request::TypingStart { team } => self.typing(team, true).await,
            Request::TypingStop { team } => self.typing(team, false).await,
            Request::RoomJoin { team, since } => self.join(team, since, rid.clone()).await,
            Request::RoomLeave { team } => self.leave(team, rid.clone()).await,
            Request::MessageEdit { team, seq, body } => {
                self.amend_message(team, seq, Some(body), rid.clone()).await
            }
            Request::MessageDelete { team, seq } => {
                self.amend_message(team, seq, None, rid.clone()).await
            }
            Request::ReceiptUpdate { team, seq } => self.update_receipt(team, seq),
            Request::MessageSend {
                team,
                client_id,
                body,
                meta,
            } => {
                self.send_message(team, client_id, body, meta, rid.clone())
                    .await
            }
        };
        match result {
            Ok(reply) => reply,
            Err(mut error) => {
                error.rid = rid;
                self.count_violation(error.code);
                Some(error.into_frame())
            }
        }
    }

    /// The instant a token with this `exp` stops being accepted.
    fn token_deadline(&self, exp: u64) -> Instant {
        let valid_for =
            (exp + self.state.config.token_leeway_s).saturating_sub(now_ms() as u64 / 1000);
        Instant::now() + Duration::from_secs(valid_for)
    }

    /// `token:refresh`: a valid token of the same user extends the session; anything else
    /// closes it (4003 if expired, else 4001).
    fn refresh_token(&mut self, token: &str, rid: Option<String>) -> Option<ServerFrame> {
        match self.state.verifier.verify(token) {
            Ok(claims) if claims.sub == self.claims.sub => {
                self.expires_at = self.token_deadline(claims.exp);
                let exp = claims.exp;
                *self.claims = claims;
                Some(ServerFrame::TokenRefreshed { exp, rid })
            }
            Ok(_) => {
                self.close_with = Some(CloseAsked::OtherUser);
                None
            }
            Err(error) => {
                self.close_with = Some(CloseAsked::BadToken(error));
                None
            }
        }
    }

    /// Counts protocol violations; too many within a minute closes the connection (1008).
    fn count_violation(&mut self, code: ErrorCode) {
        if !matches!(code, ErrorCode::BadRequest | ErrorCode::UnknownType) {
            return;
        }
        let now = Instant::now();
        self.violations
            .retain(|t| now.duration_since(*t) <= Duration::from_secs(60));
        self.violations.push(now);
        if self.violations.len() >= self.state.config.max_violations.max(1) {
            self.close_with = Some(CloseAsked::Violations);
        }
    }

    async fn typing(
        &mut self,
        team: String,
        start: bool,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            ..RequestError::new(code, message)
        };
        if !self.joined.contains(&team) {
            return Err(error(ErrorCode::NotJoined, "team not joined"));
        }
        if !self.claims.is_member(&team) {
            return Err(error(ErrorCode::Forbidden, "team not in token"));
        }
        let kind = if start {
            self.typing.insert(team.clone());
            Ephemeral::TypingStart
        } else {
            self.typing.remove(&team);
            Ephemeral::TypingStop
        };
        self.publish_typing(&team, kind).await;
        Ok(None)
    }

    /// Typing is best effort: if Redis is down it is dropped (the room's timeout ends it).
    async fn publish_typing(&self, team: &str, kind: Ephemeral) {
        if let Err(e) = self
            .state
            .broker
            .publish_ephemeral(team, kind, &self.who.session, &self.claims.sub)
            .await
        {
            debug!(error = %e, "typing not published");
        }
    }

    async fn join(
        &mut self,
        team: String,
        since: Option<protocol::Since>,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let room_error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            room: true,
            ..RequestError::new(code, message)
        };
        if !self.claims.may_read(&team) {
            return Err(room_error(ErrorCode::Forbidden, "team not in token"));
        }
        if self.joined.contains(&team) {
            // Already joined: nothing changes; the room's answer was given on the first join.
            return Err(room_error(ErrorCode::BadRequest, "already joined"));
        }
        if self.joined.len() >= self.state.config.max_rooms {
            return Err(room_error(
                ErrorCode::TooManyRooms,
                "too many rooms on this connection",
            ));
        }
        let (done, answered) = oneshot::channel();
        let member = Member {
            conn_id: self.conn_id,
            who: self.who.clone(),
            outlet: self.outlet.clone(),
        };
        self.state.hub.join(
            &team,
            Join {
                member,
                rid,
                since,
                done,
            },
        );
        match answered.await {
            Ok(Ok(())) => {
                self.joined.insert(team);
                Ok(None)
            }
            Ok(Err(error)) => {
                self.state
                    .hub
                    .leave(&team, self.conn_id, self.who.session.clone(), None, None);
                Err(error)
            }
            Err(_) => {
                self.state
                    .hub
                    .leave(&team, self.conn_id, self.who.session.clone(), None, None);
                Err(room_error(ErrorCode::Unavailable, "room unavailable"))
            }
        }
    }

    async fn leave(
        &mut self,
        team: String,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        if !self.joined.remove(&team) {
            return Err(RequestError {
                team: Some(team),
                room: true,
                ..RequestError::new(ErrorCode::NotJoined, "team not joined")
            });
        }
        let (done, left) = oneshot::channel();
        self.state.hub.leave(
            &team,
            self.conn_id,
            self.who.session.clone(),
            Some(rid),
            Some(done),
        );
        let _ = left.await;
        if self.typing.remove(&team) {
            self.publish_typing(&team, Ephemeral::TypingStop).await;
        }
        Ok(None)
    }

    /// Checks a team-scoped write: joined, and in the token (staff may delete anywhere).
    fn check_write(&self, team: &str, staff_may: bool) -> Result<(), RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.to_owned()),
            ..RequestError::new(code, message)
        };
        if !self.joined.contains(team) {
            return Err(error(ErrorCode::NotJoined, "team not joined"));
        }
        let allowed = self.claims.is_member(team) || (staff_may && self.claims.is_staff());
        if !allowed {
            return Err(error(ErrorCode::Forbidden, "team not in token"));
        }
        Ok(())
    }

    /// Appends a durable event for a request and builds its `message:ack`.
    async fn append_acked(
        &self,
        team: String,
        data: EventData,
        target: u64,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            ..RequestError::new(code, message)
        };
        let staff = self.claims.is_staff();
        let cost = credit_cost(&self.state.config, &data);
        let limit = self.claims.credit_limit.or(self.state.config.credit_limit);
        let started = std::time::Instant::now();
        let broker = &self.state.broker;
        let appended = broker
            .append(&team, &self.who.session, &data, target, staff, cost, limit)
            .await;
        metrics::histogram!(m::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
        match appended {
            Ok(AppendOutcome::Appended(appended)) => Ok(Some(ServerFrame::MessageAck {
                client_id: match data {
                    EventData::Message(m) => Some(m.client_id),
                    _ => None,
                },
                team,
                seq: appended.seq,
                id: appended.id,
                offset: appended.offset.to_string(),
                ts: appended.ts,
                rid,
            })),
            Ok(AppendOutcome::Refused(ErrorCode::NotFound)) => {
                Err(error(ErrorCode::NotFound, "no such message"))
            }
            Ok(AppendOutcome::Refused(ErrorCode::Forbidden)) => Err(error(
                ErrorCode::Forbidden,
                "only the author may change a message",
            )),
            Ok(AppendOutcome::Refused(ErrorCode::QuotaExceeded)) => {
                Err(error(ErrorCode::QuotaExceeded, "credit limit reached"))
            }
            Ok(AppendOutcome::Refused(code)) => Err(error(code, "refused")),
            Ok(AppendOutcome::Ignored) => Ok(None),
            Err(e) => {
                metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, "append failed");
                Err(error(
                    ErrorCode::Unavailable,
                    "storage unavailable, retry later",
                ))
            }
        }
    }

    async fn send_message(
        &mut self,
        team: String,
        client_id: String,
        body: String,
        meta: Option<serde_json::Value>,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let data = EventData::Message(MessageData {
            id: uuid::Uuid::now_v7().simple().to_string(),
            client_id,
            user: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            body,
            meta,
            ts: now_ms(),
        });
        self.append_acked(team, data, 0, rid).await
    }

    /// `message:edit` (`body: Some`) or `message:delete`.
    async fn amend_message(
        &mut self,
        team: String,
        seq: u64,
        body: Option<String>,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, body.is_none())?;
        let (user, ts) = (self.claims.sub.clone(), now_ms());
        let data = match body {
            Some(body) => EventData::Edit(EditData { user, body, ts }),
            None => EventData::Delete(ActorData { user, ts }),
        };
        self.append_acked(team, data, seq, rid).await
    }

    /// `receipt:update`: no reply; coalesced per team (see `receipts`).
    fn update_receipt(
        &mut self,
        team: String,
        seq: u64,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let (state, session, user) = (&self.state, &self.who.session, &self.claims.sub);
        self.receipts
            .get_or_insert_with(|| {
                let limit = self.claims.credit_limit.or(state.config.credit_limit);
                receipts::Coalescer::spawn(state.clone(), session.clone(), user.clone(), limit)
            })
            .update(team, seq);
        Ok(None)
    }
}

/// What an event costs, by kind (`CREDIT_COST_*`).
pub fn credit_cost(config: &teamchat_shared::config::GatewayConfig, data: &EventData) -> u64 {
    match data {
        EventData::Message(_) => config.credit_cost_message,
        EventData::Edit(_) => config.credit_cost_edit,
        EventData::Delete(_) => config.credit_cost_delete,
        EventData::Receipt(_) => config.credit_cost_receipt,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
