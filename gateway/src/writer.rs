//! The send side of a connection (`Outlet`): frames written at once while the connection
//! is idle, otherwise queued (bounded) for its writer task, which writes every frame
//! queued so far with one syscall, and closes.
//!
//! Frames for many recipients are encoded once per encoding (`OutFrame`) and shared.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use futures_util::task::AtomicWaker;
use teamchat_shared::metrics as m;
use teamchat_shared::protocol::{Encoding, ServerFrame};
#[cfg(test)]
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::AbortHandle;

pub use crate::queue::TrySendError;

/// How long a connection marked too slow may take to accept what is being written.
const SLOW_WRITE_GRACE: Duration = Duration::from_secs(5);

/// A server frame shared by every local recipient, encoded at most once per encoding.
pub struct OutFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl OutFrame {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        self.frame.kind()
    }

    pub fn bytes(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| self.frame.encode(encoding))
    }
}

/// What a connection's queue carries.
pub enum Outbound {
    /// A frame shared with other recipients.
    Shared(Arc<OutFrame>),
    /// Frames shared with other recipients, queued together (one slot for a burst); the
    /// frame at the second index, if any, is not this connection's to hear (it caused it).
    Batch(Arc<Vec<Arc<OutFrame>>>, u32),
    /// A frame for this connection only (replies, welcome). Boxed: a queue's slots are
    /// the size of the largest variant, and a drained queue keeps a few of them.
    Own(Box<ServerFrame>),
    /// A control frame the reader owes the peer (pong, close echo). Boxed, as is `Close`:
    /// both are rare, and a small slot keeps every idle connection's queue small.
    Control(Box<(OpCode, Bytes)>),
    /// A heartbeat ping (the reader keeps the connection's one timer).
    Ping,
    /// Close the connection with this code; nothing is written after it.
    Close(Box<(u16, &'static str)>),
}

// Every connection's queue allocates its slots at this size: keep it two words.
const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

impl Outbound {
    pub fn own(frame: ServerFrame) -> Self {
        Outbound::Own(Box::new(frame))
    }

    pub fn control(opcode: OpCode, payload: Bytes) -> Self {
        Outbound::Control(Box::new((opcode, payload)))
    }

    pub fn close(code: u16, reason: &'static str) -> Self {
        Outbound::Close(Box::new((code, reason)))
    }

    /// A close frame: the writer sends it, and ends.
    fn closes(&self) -> bool {
        match self {
            Outbound::Close(_) => true,
            Outbound::Control(control) => control.0 == OpCode::Close,
            _ => false,
        }
    }
}

/// Why the connection's sending ended.
#[derive(Debug, PartialEq, Eq)]
enum WriterEnd {
    Closed(u16),
    /// The reader finished and everything queued was written.
    ReaderDone,
    WriteFailed,
}

/// A connection's send side, shared by its reader and its rooms. A frame for an idle
/// connection (nothing queued, nothing being written) is written to the socket by the
/// sender at once: a delivery then costs no wake-up of another task. Otherwise, or for
/// what the socket did not take, it is queued for a writer task, which writes everything
/// queued so far with one syscall, waits for the socket when it is full, and closes. The
/// writer is started when something is queued and ends when the queue is drained: an
/// idle connection has no task of its own for sending.
///
/// Close signals travel here too: rooms and the reader ask the writer to close (too slow:
/// 1013; the team stream was reset: 1012, so the client rejoins with `since` and learns
/// `recovered: false`), the writer tells the reader it finished.
#[derive(Clone)]
pub struct Outlet(Arc<Shared>);

struct Shared {
    socket: OwnedWriteHalf,
    encoding: Encoding,
    /// How many items may wait in the queue; one more closes the connection with 1013.
    capacity: usize,
    state: Mutex<State>,
    /// The close code asked of the writer; 0 while none. The first asked wins.
    close: AtomicU16,
    writer: AtomicWaker,
    reader: AtomicWaker,
}

#[derive(Default)]
struct State {
    /// The rest of frames a sender wrote in part: written first.
    rest: Option<Box<Bytes>>,
    queue: VecDeque<Outbound>,
    /// The reader finished: nothing more is accepted; the writer ends once drained.
    ending: bool,
    /// The writer task, while one runs: it writes what it took from the queue, and
    /// senders queue behind it, so order holds.
    writer: Option<AbortHandle>,
    /// Sending ended (a close frame written, the reader finished, or the socket failed).
    done: bool,
    /// The gateway is shutting down.
    shutting_down: bool,
}

/// A drained queue whose buffer grew past this many slots gives it back.
const KEEP_SLOTS: usize = 8;

/// What the writer took from the queue.
enum Taken {
    /// Frames are in the buffer; with the close code if a close frame ends them.
    Frames(Option<u16>),
    /// Nothing is left: the writer ends, and the next item queued starts another.
    Drained,
    /// Sending ended already (the connection was given up): the writer just stops.
    Stopped,
    /// The reader finished and nothing is left.
    ReaderDone,
}

thread_local! {
    /// Where a sender builds the frames it writes through (one per runtime thread).
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

impl Outlet {
    /// The send side of a connection whose queue holds at most `capacity` items.
    pub fn new(socket: OwnedWriteHalf, encoding: Encoding, capacity: usize) -> Self {
        Outlet(Arc::new(Shared {
            socket,
            encoding,
            capacity,
            state: Mutex::new(State::default()),
            close: AtomicU16::new(0),
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
        }))
    }

    /// Sends an item: written at once when the connection is idle, queued otherwise. A
    /// full queue means the peer does not read: the connection is closed with 1013.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        self.try_send_all(std::iter::once(item))
    }

    /// Sends items together (one write while the connection is idle), or none of them
    /// when they do not fit the queue.
    pub fn try_send_all<I>(&self, items: I) -> Result<(), TrySendError>
    where
        I: IntoIterator<Item = Outbound>,
        I::IntoIter: ExactSizeIterator,
    {
        let shared = &*self.0;
        let mut items = items.into_iter();
        let mut state = shared.lock();
        if state.ending || state.done {
            return Err(TrySendError::Closed);
        }
        if state.queue.len() + items.len() > shared.capacity {
            drop(state);
            self.too_slow();
            return Err(TrySendError::Full);
        }
        let idle = state.writer.is_none() && state.queue.is_empty() && state.rest.is_none();
        if idle && shared.close.load(Ordering::Acquire) == 0 {
            // Under the lock, so nothing the writer or another sender writes interleaves.
            match shared.write_through(&mut items) {
                (None, None) => return Ok(()),
                (rest, closing) => {
                    state.rest = rest.map(Box::new);
                    state.queue.extend(closing);
                }
            }
        }
        state.queue.extend(items);
        // A running writer takes what was queued before it ends: no need to wake it.
        self.start_writer(state);
        Ok(())
    }

    /// Starts a writer unless one runs (under the lock: one writer at a time).
    fn start_writer(&self, mut state: MutexGuard<'_, State>) {
        if state.writer.is_none() && !state.done {
            state.writer = Some(tokio::spawn(run(self.clone())).abort_handle());
        }
    }

    /// Free queue slots.
    pub fn capacity(&self) -> usize {
        let queued = self.0.lock().queue.len();
        self.0.capacity.saturating_sub(queued)
    }

    /// The send queue overflowed: close 1013.
    pub fn too_slow(&self) {
        self.ask(1013);
    }

    /// The team stream was lost and started anew: close 1012.
    pub fn stream_reset(&self) {
        self.ask(1012);
    }

    fn ask(&self, code: u16) {
        let asked = self
            .0
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        if asked.is_ok() {
            self.start_writer(self.0.lock());
            // A writer waiting for the socket gives it a grace period from now.
            self.0.writer.wake();
        }
    }

    /// The reader finished: nothing more is accepted, and sending ends once what is
    /// queued is written.
    pub fn end(&self) {
        let mut state = self.0.lock();
        state.ending = true;
        // With nothing pending no writer runs (one would be): sending ends now. Otherwise
        // the writer ends once it drained the queue.
        if state.writer.is_none() {
            self.0.finish(state, WriterEnd::ReaderDone);
        }
    }

    /// Gives up on a peer that does not read what is being written: the writer is
    /// stopped, and nothing more is sent.
    pub fn abandon(&self) {
        let mut state = self.0.lock();
        if let Some(writer) = state.writer.take() {
            writer.abort();
        }
        self.0.finish(state, WriterEnd::WriteFailed);
    }

    /// Resolves once sending ended (only the reader waits for this).
    pub fn ended(&self) -> impl Future<Output = ()> + '_ {
        self.reader_wait(|state| state.done.then_some(()))
    }

    /// The gateway is shutting down: the reader closes the connection (1012) between
    /// requests. Told through the outlet, which the reader waits on anyway: a waiter on
    /// the gateway's shutdown token would add ≈ 70 bytes to every idle connection.
    pub fn shut_down(&self) {
        self.0.lock().shutting_down = true;
        self.0.reader.wake();
    }

    /// Resolves when sending ended or the gateway shuts down (only the reader waits).
    pub fn stop_reading(&self) -> impl Future<Output = StopReading> + '_ {
        self.reader_wait(|state| match (state.done, state.shutting_down) {
            (true, _) => Some(StopReading::Ended),
            (false, true) => Some(StopReading::ShutDown),
            (false, false) => None,
        })
    }

    /// Waits (in the reader's task) until `ready` gives a value. Plain functions returning
    /// `poll_fn`, not `async fn`s: these futures are part of every idle connection.
    fn reader_wait<'a, T>(
        &'a self,
        ready: impl Fn(&State) -> Option<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        let check = move || ready(&self.0.lock());
        poll_fn(move |cx| {
            if let Some(value) = check() {
                return Poll::Ready(value);
            }
            self.0.reader.register(cx.waker());
            match check() {
                Some(value) => Poll::Ready(value),
                None => Poll::Pending,
            }
        })
    }
}

/// Why the reader is to stop waiting for frames.
pub enum StopReading {
    /// Sending ended: a close was written (too slow, stream reset) or the socket failed.
    Ended,
    /// The gateway is shutting down.
    ShutDown,
}

impl Shared {
    /// The state; a panic elsewhere while it was held does not stop the connection from
    /// being closed.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes items to the socket without waiting, up to the first that closes (the
    /// writer sends that one, and ends). Returns what the socket did not take and the
    /// item it stopped at: both to be queued, before the items not taken.
    fn write_through(
        &self,
        items: &mut impl Iterator<Item = Outbound>,
    ) -> (Option<Bytes>, Option<Outbound>) {
        SCRATCH.with_borrow_mut(|buffer| {
            buffer.clear();
            let closing = items.find_map(|item| {
                if item.closes() {
                    return Some(item);
                }
                push(buffer, item, self.encoding);
                None
            });
            // A refusal (full socket buffer) or an error leaves it to the writer, which
            // waits for the socket or ends.
            let written = match buffer.is_empty() {
                true => 0,
                false => try_write(&self.socket, buffer).unwrap_or(0),
            };
            let rest = (written < buffer.len()).then(|| Bytes::copy_from_slice(&buffer[written..]));
            if buffer.capacity() > 64 * 1024 {
                *buffer = BytesMut::new();
            }
            (rest, closing)
        })
    }

    /// Takes what is queued into the buffer (a close asked for first), or learns that
    /// nothing is left.
    fn take(&self, buffer: &mut BytesMut) -> Taken {
        let mut state = self.lock();
        if state.done {
            return Taken::Stopped;
        }
        // The rest of frames written in part goes first, whatever follows.
        if let Some(rest) = state.rest.take() {
            buffer.extend_from_slice(&rest);
        }
        let code = self.close.load(Ordering::Acquire);
        if code != 0 {
            let reason = if code == 1012 {
                "stream reset; rejoin with since"
            } else {
                "too slow"
            };
            // What is queued is dropped (the rest of a frame written in part is not).
            state.queue.clear();
            return Taken::Frames(push(buffer, Outbound::close(code, reason), self.encoding));
        }
        if state.queue.is_empty() && buffer.is_empty() {
            if state.ending {
                return Taken::ReaderDone;
            }
            state.writer = None;
            return Taken::Drained;
        }
        let mut closed = None;
        // Coalesce: everything queued now goes out in one write.
        while closed.is_none() && buffer.len() < 256 * 1024 {
            let Some(item) = state.queue.pop_front() else {
                break;
            };
            closed = push(buffer, item, self.encoding);
        }
        if state.queue.is_empty() && state.queue.capacity() > KEEP_SLOTS {
            state.queue = VecDeque::new();
        }
        Taken::Frames(closed)
    }

    /// Resolves with the close code once one is asked for.
    async fn close_asked(&self) -> u16 {
        poll_fn(|cx| {
            let code = self.close.load(Ordering::Acquire);
            if code != 0 {
                return Poll::Ready(code);
            }
            self.writer.register(cx.waker());
            match self.close.load(Ordering::Acquire) {
                0 => Poll::Pending,
                code => Poll::Ready(code),
            }
        })
        .await
    }

    /// Sending ended: nothing more is accepted or written. Once only.
    fn finish(&self, mut state: MutexGuard<'_, State>, end: WriterEnd) {
        if state.done {
            return;
        }
        state.done = true;
        state.writer = None;
        state.rest = None;
        state.queue = VecDeque::new();
        drop(state);
        // The peer learns at once that nothing follows (the socket itself closes only
        // when the connection's last holder lets go of it, which may wait on Redis).
        let _ = socket2::SockRef::from(self.socket.as_ref()).shutdown(std::net::Shutdown::Write);
        self.reader.wake();
        let code = match end {
            WriterEnd::Closed(code) => code.to_string(),
            _ => "none".to_owned(),
        };
        metrics::counter!(m::CLOSES, "code" => code).increment(1);
        if end == WriterEnd::Closed(1013) {
            metrics::counter!(m::QUEUE_OVERFLOWS).increment(1);
        }
    }
}

/// A writer: writes what is queued until the queue is drained or the connection closes.
async fn run(outlet: Outlet) {
    let shared = &*outlet.0;
    let mut buffer = BytesMut::new();
    let end = loop {
        let closed = match shared.take(&mut buffer) {
            Taken::Frames(closed) => closed,
            Taken::Drained | Taken::Stopped => return,
            Taken::ReaderDone => break WriterEnd::ReaderDone,
        };
        if !write_all_or_give_up(shared, &buffer).await {
            break WriterEnd::WriteFailed;
        }
        if let Some(code) = closed {
            break WriterEnd::Closed(code);
        }
        buffer.clear();
    };
    shared.finish(shared.lock(), end);
}

/// Writes the buffer. A peer that stops reading blocks the write; once a close is asked
/// for (too slow, stream reset) the write gets `SLOW_WRITE_GRACE` to finish (so the close
/// frame can follow), then the connection is given up. Returns false when the write did
/// not complete.
async fn write_all_or_give_up(shared: &Shared, buffer: &[u8]) -> bool {
    let write = write_all(&shared.socket, buffer);
    tokio::pin!(write);
    tokio::select! {
        written = &mut write => written.is_ok(),
        _ = shared.close_asked() => matches!(tokio::time::timeout(SLOW_WRITE_GRACE, write).await, Ok(Ok(()))),
    }
}

/// Writes all of `buffer`, waiting for the socket when it is full.
async fn write_all(socket: &OwnedWriteHalf, mut buffer: &[u8]) -> std::io::Result<()> {
    while !buffer.is_empty() {
        match try_write(socket, buffer) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buffer = &buffer[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One write call to the socket, counted: frames out over writes shows how well frames
/// are coalesced.
fn try_write(socket: &OwnedWriteHalf, buffer: &[u8]) -> std::io::Result<usize> {
    metrics::counter!(m::SOCKET_WRITES).increment(1);
    socket.try_write(buffer)
}

/// Appends an item to the write buffer; returns the close code once a close frame is in it.
fn push(buffer: &mut BytesMut, item: Outbound, encoding: Encoding) -> Option<u16> {
    let opcode = match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::MsgPack => OpCode::Binary,
    };
    match item {
        Outbound::Shared(frame) => push_frame(buffer, opcode, frame.bytes(encoding)),
        Outbound::Batch(frames, skip) => {
            for (i, frame) in frames.iter().enumerate() {
                if i != skip as usize {
                    push_frame(buffer, opcode, frame.bytes(encoding));
                }
            }
        }
        Outbound::Own(frame) => push_frame(buffer, opcode, &frame.encode(encoding)),
        Outbound::Ping => push_frame(buffer, OpCode::Ping, b""),
        Outbound::Control(control) => {
            let (op, payload) = *control;
            push_frame(buffer, op, &payload);
            if op == OpCode::Close {
                return Some(
                    payload
                        .get(..2)
                        .map_or(1000, |b| u16::from_be_bytes([b[0], b[1]])),
                );
            }
        }
        Outbound::Close(close) => {
            let (code, reason) = *close;
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
            push_frame(buffer, OpCode::Close, &payload);
            return Some(code);
        }
    }
    None
}

/// Appends one unmasked server frame.
fn push_frame(buffer: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; 10];
    let len = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    buffer.extend_from_slice(&head[..len]);
    buffer.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{Role, WebSocket};
    use tokio::net::{TcpListener, TcpStream};

    /// An outlet on one end of a loopback connection, a client reading frames on the other.
    async fn connected(capacity: usize) -> (Outlet, WebSocket<TcpStream>, OwnedReadHalf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let outlet = Outlet::new(write, Encoding::Json, capacity);
        (
            outlet,
            WebSocket::after_handshake(client, Role::Client),
            read,
        )
    }

    /// A binary frame of `size` bytes that names its sender and number.
    fn numbered(sender: u8, n: u32, size: usize) -> Outbound {
        let mut payload = vec![0u8; size];
        payload[0] = sender;
        payload[1..5].copy_from_slice(&n.to_be_bytes());
        Outbound::control(OpCode::Binary, payload.into())
    }

    /// The next frame; a stream broken mid-frame would leave the client waiting.
    async fn next_frame(client: &mut WebSocket<TcpStream>) -> (OpCode, Vec<u8>) {
        let read = tokio::time::timeout(Duration::from_secs(20), client.read_frame());
        let frame = read.await.expect("a whole frame").unwrap();
        (frame.opcode, frame.payload.to_vec())
    }

    fn number(payload: &[u8]) -> (usize, u32) {
        let n = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        (payload[0] as usize, n)
    }

    const FRAMES: u32 = 400;
    const SIZE: usize = 30_000;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_concurrent_senders_arrive_whole_and_in_each_senders_order() {
        let (outlet, mut client, _read) = connected(2 * FRAMES as usize).await;
        // 24 MB to a client that reads as they come: the socket's buffers fill and drain,
        // writes end part way, and senders meet the writer at every stage.
        let reading = tokio::spawn(async move {
            let mut next = [0u32; 2];
            while next != [FRAMES, FRAMES] {
                let (opcode, payload) = next_frame(&mut client).await;
                assert_eq!(opcode, OpCode::Binary);
                let (sender, n) = number(&payload);
                assert_eq!(n, next[sender], "sender {sender}'s frames out of order");
                assert_eq!(payload.len(), SIZE + n as usize);
                next[sender] += 1;
            }
        });
        let senders: Vec<_> = (0..2u8)
            .map(|sender| {
                let outlet = outlet.clone();
                tokio::spawn(async move {
                    for n in 0..FRAMES {
                        outlet
                            .try_send(numbered(sender, n, SIZE + n as usize))
                            .unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await.unwrap();
        }
        reading.await.unwrap();
    }

    #[tokio::test]
    async fn frames_sent_together_to_an_idle_connection_take_one_write() {
        let (outlet, mut client, _read) = connected(16).await;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            outlet
                .try_send_all((0..3).map(|n| numbered(0, n, 10)))
                .unwrap();
            outlet.try_send(numbered(0, 3, 10)).unwrap();
        });
        for n in 0..4 {
            assert_eq!(number(&next_frame(&mut client).await.1), (0, n));
        }
        let text = handle.render();
        let writes = text
            .lines()
            .find_map(|line| line.strip_prefix(m::SOCKET_WRITES)?.strip_prefix(' '));
        assert_eq!(writes, Some("2"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_for_a_slow_peer_follows_the_last_whole_frame() {
        let (outlet, mut client, _read) = connected(FRAMES as usize).await;
        for n in 0..FRAMES {
            outlet.try_send(numbered(0, n, SIZE)).unwrap();
        }
        outlet.too_slow();
        let mut next = 0;
        let code = loop {
            let (opcode, payload) = next_frame(&mut client).await;
            if opcode == OpCode::Close {
                break u16::from_be_bytes([payload[0], payload[1]]);
            }
            assert_eq!((opcode, number(&payload)), (OpCode::Binary, (0, next)));
            assert_eq!(payload.len(), SIZE);
            next += 1;
        };
        assert_eq!(code, 1013);
        outlet.ended().await;
        assert_eq!(outlet.try_send(Outbound::Ping), Err(TrySendError::Closed));
        // Nothing follows the close, and the peer is told so at once (this test still
        // holds the socket, as rooms may for a while).
        let after = tokio::time::timeout(Duration::from_secs(5), client.read_frame()).await;
        assert!(after.expect("end of stream after the close").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_sent_once_the_connection_is_given_up() {
        let (outlet, _client, _read) = connected(FRAMES as usize).await;
        // The client never reads: the writer waits for the socket mid-frame.
        for n in 0..FRAMES {
            outlet.try_send(numbered(0, n, SIZE)).unwrap();
        }
        outlet.end();
        outlet.abandon();
        // A room that still holds the member asks for a close: no writer may start (its
        // close frame would follow a frame written in part).
        outlet.too_slow();
        assert!(
            outlet.0.lock().writer.is_none(),
            "a writer started after giving up"
        );
        assert_eq!(outlet.try_send(Outbound::Ping), Err(TrySendError::Closed));
        outlet.ended().await;
    }
}
