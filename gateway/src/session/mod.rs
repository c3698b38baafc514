//! One client connection after the upgrade: the opening (`open`: authentication by `auth`
//! with the keys of `signing_keys`, the per-user connection limit, the welcome; `connections` is this gateway's registry
//! of them), then the read loop, which decodes frames
//! and carries out requests in order (`requests`, one function each, rate-limited by
//! `limits`; receipts coalesced by `receipts`), and the close. Replies and room events go
//! out through the connection's `Outlet`.

pub mod auth;
pub mod connections;
pub mod limits;
mod linger;
mod open;
mod receipts;
mod requests;
pub mod signing_keys;
mod teams;

pub(crate) use requests::credit_cost;

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocketError};
use hyper::upgrade::Upgraded;
use teamchat_shared::event::Ephemeral;
use teamchat_shared::metrics as m;
use teamchat_shared::runtime::now_ms;
use tokio::time::Instant;
use tracing::debug;

use self::auth::{AuthError, Claims};
use self::connections::Order;
use self::open::{let_close, open};
use self::teams::Teams;
use crate::deflate::{self, InflateError};
use crate::outlet::{ConnectionSlot, Outbound, Outlet, StopReading};
use crate::protocol::{self, Encoding, Limits};
use crate::room::Who;
use crate::{AppState, caught};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long a closing connection waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A fragmented message being collected.
#[derive(Default)]
struct Partial {
    bytes: Vec<u8>,
    /// A text message, whose UTF-8 is checked as its fragments come (a single-frame text
    /// message is checked by the frame reader).
    text: bool,
    /// How much of `bytes` is known to be valid UTF-8.
    valid: usize,
    /// Compressed (permessage-deflate): collected as it came, inflated and checked whole.
    compressed: bool,
}

impl Partial {
    /// Whether the text so far can still be UTF-8: invalid as soon as it cannot (RFC 6455
    /// §8.1 fails fast), while a code point cut at a fragment's end may go on in the next
    /// one, but not past the last fragment.
    fn utf8_so_far(&mut self, last: bool) -> bool {
        match std::str::from_utf8(&self.bytes[self.valid..]) {
            Ok(_) => {
                self.valid = self.bytes.len();
                true
            }
            Err(e) => {
                self.valid += e.valid_up_to();
                e.error_len().is_none() && !last
            }
        }
    }
}

/// A compressed message inflated, at most `limit` bytes (1009 past it: a zip bomb is
/// stopped there) and, as text, UTF-8 (1007).
fn inflated(compressed: &[u8], text: bool, limit: usize) -> Result<Vec<u8>, Flow> {
    let message = match deflate::inflate(compressed, limit) {
        Ok(message) => message,
        Err(InflateError::TooLarge) => return Err(Flow::Close(1009, "message too large")),
        Err(InflateError::Corrupt) => return Err(Flow::Close(1007, "invalid compressed data")),
    };
    if text && std::str::from_utf8(&message).is_err() {
        return Err(Flow::Close(1007, "invalid utf-8"));
    }
    Ok(message)
}

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
type Reader = fastwebsockets::WebSocketRead<crate::transport::ReadHalf>;

/// Opens a connection after the upgrade (authentication, the per-user limit, welcome),
/// then hands it to a task of its own that reads it until it closes: the task that lives
/// as long as the connection carries none of the opening's state.
pub async fn run(
    state: Arc<AppState>,
    upgraded: Upgraded,
    auth: Result<Claims, AuthError>,
    encoding: Encoding,
    deflate: bool,
    slot: Option<ConnectionSlot>,
) {
    if let Some((session, ws)) = open(state, upgraded, auth, encoding, deflate, slot).await {
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
            // A bug that panics while a frame is worked on closes this connection with
            // 1011, not the process; the connection is then let go of as usual.
            let server_closed = match caught(self.read_loop(&mut ws)).await {
                Some(server_closed) => server_closed,
                None => {
                    Box::pin(self.close(1011, "internal error")).await;
                    true
                }
            };
            Box::pin(self.finish()).await;
            // The peer reads the gateway's close before the socket goes (see `linger`).
            if server_closed {
                Box::pin(linger::linger(&mut ws)).await;
            }
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

    /// Reads frames and carries out requests until the connection is to close; resolves
    /// to whether the gateway closed it (rather than the peer). What is live across this
    /// loop's awaits is in every idle connection: the work on a frame is boxed
    /// (`on_frame`), and a close is queued at one place.
    #[allow(clippy::manual_async_fn)] // not an `async fn`, which holds its arguments twice
    fn read_loop<'a>(&'a mut self, ws: &'a mut Reader) -> impl Future<Output = bool> + Send + 'a {
        async move {
            // Fragments are collected here, not by fastwebsockets' collector, so that a
            // message's total size is capped while it arrives (1009), not only its frames'.
            // Boxed: fragmented messages are rare.
            let mut partial: Option<Box<Partial>> = None;
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
                            let socket = ws.get_ref();
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
                            stop = self.outlet.stop_reading() => match stop {
                                // Drain: between requests, so what was accepted is answered first.
                                StopReading::ShutDown => break Err(Flow::Close(1012, "gateway restarting")),
                                // A close was written (too slow, stream reset), or the socket failed.
                                StopReading::Ended => break Err(Flow::Stop),
                                // Between requests too; a frame half read is kept.
                                StopReading::Orders => if let Some(flow) = self.carry_out_orders() {
                                    break Err(flow);
                                },
                            },
                        }
                    }
                };
                heard = Instant::now();
                let flow = match frame {
                    Ok(Ok(frame)) => Box::pin(self.on_frame(frame, &mut partial)).await,
                    Ok(Err(WebSocketError::FrameTooLarge)) => Flow::Close(1009, "frame too large"),
                    // A text frame, or a close reason, that is not UTF-8 (RFC 6455 §8.1).
                    Ok(Err(WebSocketError::InvalidUTF8)) => Flow::Close(1007, "invalid utf-8"),
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
            let server_closed = !matches!(flow, Flow::PeerClosed);
            // Boxed: its timer would otherwise widen every idle connection's future.
            Box::pin(self.closing(flow)).await;
            server_closed
        }
    }

    /// The most a compressed message may inflate to: `max_frame`, and no more than the
    /// largest request can take (a body whose every character is escaped, the largest
    /// `meta`, and room for the rest). Deflate reaches ≈ 1,000:1, so without this bound a
    /// frame of 1 KiB could make the gateway inflate and parse a whole `max_frame`.
    fn inflate_limit(&self) -> usize {
        let config = &self.state.config;
        let largest_request = 6 * config.max_body + config.max_meta + 16 * 1024;
        config.max_frame.min(largest_request)
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
    async fn on_frame(&mut self, frame: Frame<'_>, partial: &mut Option<Box<Partial>>) -> Flow {
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
                    if frame.rsv1 {
                        let text = frame.opcode == OpCode::Text;
                        match inflated(&frame.payload, text, self.inflate_limit()) {
                            Ok(message) => Some(message),
                            Err(flow) => return flow,
                        }
                    } else {
                        Some(frame.payload.to_vec())
                    }
                } else {
                    let collected = partial.get_or_insert_with(|| {
                        Box::new(Partial {
                            text: frame.opcode == OpCode::Text,
                            compressed: frame.rsv1,
                            ..Partial::default()
                        })
                    });
                    if collected.bytes.len() + frame.payload.len() > max_frame {
                        return Flow::Close(1009, "frame too large");
                    }
                    collected.bytes.extend_from_slice(&frame.payload);
                    if collected.text && !collected.compressed && !collected.utf8_so_far(frame.fin)
                    {
                        return Flow::Close(1007, "invalid utf-8");
                    }
                    match (frame.fin, partial.take_if(|_| frame.fin)) {
                        (true, Some(collected)) if collected.compressed => {
                            match inflated(&collected.bytes, collected.text, self.inflate_limit()) {
                                Ok(message) => Some(message),
                                Err(flow) => return flow,
                            }
                        }
                        (_, collected) => collected.map(|collected| collected.bytes),
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

    /// Carries out what the server API ordered: a revoked token closes the connection
    /// (4001), a removal takes it out of the team (`room:left`, reason "removed"). Only
    /// tokens issued before the order are affected: a newer one was granted afresh.
    fn carry_out_orders(&mut self) -> Option<Flow> {
        if !self.outlet.take_orders() {
            return None;
        }
        let issued = self.claims.issued_ms();
        for order in self.state.connections.take_orders(&self.who.session) {
            match order {
                Order::Revoke { before_ms } if issued < before_ms => {
                    return Some(Flow::Close(4001, AuthError::Revoked.reason()));
                }
                Order::Remove { team, before_ms } if issued < before_ms => {
                    // The token no longer opens the team here: no rejoin, no mentions, and
                    // a refresh with a token from before the removal does not bring it back.
                    self.claims.teams.retain(|t| *t != team);
                    self.claims.removed.push((team.clone(), before_ms));
                    let was_typing = self.end_membership(&team, "removed");
                    if was_typing {
                        // Not awaited here (between frames): the others stop seeing them type.
                        let state = self.state.clone();
                        let (session, user) = (self.who.session.clone(), self.who.user.clone());
                        tokio::spawn(async move {
                            let stop = Ephemeral::TypingStop;
                            let _ = state
                                .broker
                                .publish_ephemeral(&team, stop, &session, &user)
                                .await;
                        });
                    }
                }
                Order::Tell { team, frame } if self.claims.may_read(&team) => {
                    metrics::counter!(m::EVENTS_OUT, "type" => frame.kind()).increment(1);
                    if self.outlet.try_send(Outbound::Shared(frame)).is_err() {
                        return Some(Flow::Stop);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Sends a close frame and waits (briefly) for it to be written.
    async fn close(&self, code: u16, reason: &'static str) {
        // A full queue (the peer is not reading) closes with 1013 instead.
        let _ = self.outlet.try_send(Outbound::close(code, reason));
        let _ = tokio::time::timeout(CLOSE_GRACE, self.outlet.ended()).await;
    }

    /// The instant a token with this `exp` stops being accepted.
    fn token_deadline(&self, exp: u64) -> Instant {
        // `exp` is at most MAX_EXP (auth): no sum here overflows.
        let valid_for =
            (exp + self.state.config.token_leeway_s).saturating_sub(now_ms() as u64 / 1000);
        Instant::now() + Duration::from_secs(valid_for)
    }
}

#[cfg(test)]
mod tests {
    use fastwebsockets::{Frame, OpCode, Role};

    /// Reads a client's frames as a session does (permessage-deflate negotiated or not):
    /// the frames until the first error.
    async fn read_all(bytes: &[u8], deflate: bool) -> Vec<(OpCode, bool)> {
        let (mut ws, _) =
            fastwebsockets::after_handshake_split(bytes, tokio::io::sink(), Role::Server);
        ws.set_max_message_size(1024);
        ws.set_auto_pong(false);
        ws.set_deflate(deflate);
        let mut obligated = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
        let mut frames = Vec::new();
        while let Ok(frame) = ws.read_frame(&mut obligated).await {
            assert!(frame.payload.len() <= 1024);
            frames.push((frame.opcode, frame.rsv1));
        }
        frames
    }

    /// A masked client frame (mask 0) with this first byte; its payload, 0xff bytes, is
    /// not UTF-8.
    fn client_frame(first: u8, len: u8) -> Vec<u8> {
        let mut frame = vec![first, 0x80 | len, 0, 0, 0, 0];
        frame.resize(6 + len as usize, 0xff);
        frame
    }

    #[tokio::test]
    async fn rsv1_is_read_only_on_a_data_message_s_first_frame_once_negotiated() {
        // 0xC1: final text, RSV1 (not UTF-8-checked here: it is compressed);
        // 0x42 then 0x80: a binary message in two fragments, RSV1 on the first.
        let compressed = [
            client_frame(0xC1, 3),
            client_frame(0x42, 2),
            client_frame(0x80, 1),
        ]
        .concat();
        let read = read_all(&compressed, true).await;
        assert_eq!(
            read,
            [
                (OpCode::Text, true),
                (OpCode::Binary, true),
                (OpCode::Continuation, false)
            ]
        );
        // Not negotiated: refused at the first frame.
        assert_eq!(read_all(&compressed, false).await, []);
        // RSV1 on a continuation or a control frame: refused even when negotiated.
        let continuation = [client_frame(0x42, 2), client_frame(0xC0, 1)].concat();
        assert_eq!(
            read_all(&continuation, true).await,
            [(OpCode::Binary, true)]
        );
        assert_eq!(read_all(&client_frame(0xC9, 0), true).await, []);
    }

    proptest::proptest! {
        /// The (vendored) frame reader as a session sets it up, over arbitrary bytes from
        /// a client: frames or an error, never a panic, never a frame over the limit; and
        /// with permessage-deflate, RSV1 only on text or binary frames.
        #[test]
        fn fuzz_the_frame_reader_with_deflate(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let frames = runtime.block_on(read_all(&bytes, true));
            for (opcode, rsv1) in frames {
                assert!(!rsv1 || matches!(opcode, OpCode::Text | OpCode::Binary));
            }
        }

        /// The (vendored) frame reader as a session sets it up, over arbitrary bytes from
        /// a client: frames or an error, never a panic, never a frame over the limit.
        #[test]
        fn fuzz_the_frame_reader(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let (mut ws, _) =
                    fastwebsockets::after_handshake_split(&bytes[..], tokio::io::sink(), Role::Server);
                ws.set_max_message_size(1024);
                ws.set_auto_pong(false);
                let mut obligated = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
                // Each frame takes at least two bytes: this reads them all.
                for _ in 0..bytes.len() {
                    match ws.read_frame(&mut obligated).await {
                        Ok(frame) => assert!(frame.payload.len() <= 1024),
                        Err(_) => break,
                    }
                }
            });
        }
    }
}
