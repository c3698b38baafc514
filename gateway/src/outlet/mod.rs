//! The send side of a connection (`Outlet`): frames written at once while the connection
//! is idle, otherwise queued (bounded) for its writer task, which writes every frame
//! queued so far with one syscall, and closes.
//!
//! Frames for many recipients are encoded once per encoding (`OutFrame`, in `frame`) and
//! shared.

mod frame;
mod writer;

pub use frame::{OutFrame, Outbound};

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use teamchat_shared::metrics as m;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

use self::frame::{push, weight};
use self::writer::try_write;
use crate::protocol::Encoding;
use crate::transport::WriteHalf;

/// A place among the gateway's `MAX_CONNECTIONS`, held as long as its TCP connection is
/// open: by the HTTP connection, then by the outlet after an upgrade.
pub type ConnectionSlot = OwnedSemaphorePermit;

/// Why `try_send` did not queue the item.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue is full: the connection is being closed with 1013.
    Full,
    /// Sending ended (the connection closed or is closing).
    Closed,
}

/// How long a connection marked too slow may take to accept what is being written.
const SLOW_WRITE_GRACE: Duration = Duration::from_secs(5);

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
    socket: WriteHalf,
    encoding: Encoding,
    /// permessage-deflate was negotiated: data frames of 1 KiB and more go compressed.
    deflate: bool,
    limits: QueueLimits,
    state: Mutex<State>,
    /// The close code asked of the writer; 0 while none. The first asked wins.
    close: AtomicU16,
    writer: AtomicWaker,
    reader: AtomicWaker,
    /// The connection's place among `MAX_CONNECTIONS`, given back when the socket goes.
    _slot: Option<OwnedSemaphorePermit>,
}

/// How much may wait to be written to one connection: past either bound the peer is not
/// reading (close 1013). Numbers of 32 bits: every connection holds them.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Items in the queue.
    pub frames: u32,
    /// Bytes the queued items and the rest of a frame written in part will take: a few
    /// large items (a presence list of a big team, a replay) weigh as much as many.
    pub bytes: u32,
    /// Longest the socket may take no bytes at all while some wait: the connection is
    /// then given up, however little is queued.
    pub stall_ms: u32,
}

#[derive(Default)]
struct State {
    /// The rest of frames a sender wrote in part: written first.
    rest: Option<Box<Bytes>>,
    queue: VecDeque<Outbound>,
    /// What the queued items weigh (`frame::weight`), plus the rest's length.
    queued_bytes: usize,
    /// The reader finished: nothing more is accepted; the writer ends once drained.
    ending: bool,
    /// The writer task, while one runs: it writes what it took from the queue, and
    /// senders queue behind it, so order holds.
    writer: Option<AbortHandle>,
    /// Sending ended (a close frame written, the reader finished, or the socket failed).
    done: bool,
    /// The gateway is shutting down.
    shutting_down: bool,
    /// The server API left orders for the reader (`Connections::take_orders`).
    orders: bool,
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
    /// The send side of a connection whose queue holds at most what `limits` allow.
    pub fn new(
        socket: WriteHalf,
        encoding: Encoding,
        deflate: bool,
        limits: QueueLimits,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Outlet(Arc::new(Shared {
            socket,
            encoding,
            deflate,
            limits,
            state: Mutex::new(State::default()),
            close: AtomicU16::new(0),
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
            _slot: slot,
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
        if state.queue.len() + items.len() > shared.limits.frames as usize {
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
                    state.queued_bytes += rest.as_ref().map_or(0, Bytes::len);
                    state.queued_bytes +=
                        closing.as_ref().map_or(0, |c| weight(c, shared.encoding));
                    state.rest = rest.map(Box::new);
                    state.queue.extend(closing);
                }
            }
        }
        // Queued, a reply is encoded now, to be weighed (it is written as encoded).
        let encoding = shared.encoding;
        let mut added = 0;
        state.queue.extend(items.map(|item| {
            let item = item.encoded(encoding);
            added += weight(&item, encoding);
            item
        }));
        state.queued_bytes += added;
        if state.queued_bytes > shared.limits.bytes as usize {
            // Closing drops what is queued: nothing needs taking back.
            drop(state);
            self.too_slow();
            return Err(TrySendError::Full);
        }
        // A running writer takes what was queued before it ends: no need to wake it.
        self.start_writer(state);
        Ok(())
    }

    /// Starts a writer unless one runs (under the lock: one writer at a time).
    fn start_writer(&self, mut state: MutexGuard<'_, State>) {
        if state.writer.is_none() && !state.done {
            state.writer = Some(tokio::spawn(writer::run(self.clone())).abort_handle());
        }
    }

    /// Free queue slots.
    pub fn capacity(&self) -> usize {
        let queued = self.0.lock().queue.len();
        (self.0.limits.frames as usize).saturating_sub(queued)
    }

    /// The send queue overflowed: close 1013.
    pub fn too_slow(&self) {
        self.ask(1013);
    }

    /// The team stream was lost and started anew: close 1012.
    pub fn stream_reset(&self) {
        self.ask(1012);
    }

    /// What serves the connection failed (a room's task panicked): close 1011.
    pub fn internal_error(&self) {
        self.ask(1011);
    }

    /// The application's backend closes the connection (server API): 1000, 4001 or 4003.
    pub fn disconnect(&self, code: u16) {
        self.ask(code);
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

    /// The server API left orders for this connection (revoke, remove from a team): the
    /// reader carries them out between requests.
    pub fn order(&self) {
        self.0.lock().orders = true;
        self.0.reader.wake();
    }

    /// Whether orders were left since the last call (only the reader asks).
    pub fn take_orders(&self) -> bool {
        std::mem::take(&mut self.0.lock().orders)
    }

    /// Resolves when sending ended, the gateway shuts down or orders were left (only the
    /// reader waits).
    pub fn stop_reading(&self) -> impl Future<Output = StopReading> + '_ {
        self.reader_wait(|state| match (state.done, state.shutting_down) {
            (true, _) => Some(StopReading::Ended),
            (false, true) => Some(StopReading::ShutDown),
            (false, false) if state.orders => Some(StopReading::Orders),
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
    /// The server API left orders (`Outlet::order`).
    Orders,
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
                push(buffer, item, self.encoding, self.deflate);
                None
            });
            // A refusal (full socket buffer) or an error leaves it to the writer, which
            // waits for the socket or ends.
            let written = match buffer.is_empty() {
                true => 0,
                false => try_write(&self.socket, buffer).unwrap_or(0),
            };
            // Bytes taken but not yet written (TLS ciphertext) leave a rest too, if empty:
            // the writer writes them.
            let rest = (written < buffer.len() || self.socket.pending())
                .then(|| Bytes::copy_from_slice(&buffer[written..]));
            if buffer.capacity() > 64 * 1024 {
                *buffer = BytesMut::new();
            }
            (rest, closing)
        })
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
        state.queued_bytes = 0;
        drop(state);
        // The peer learns at once that nothing follows (the socket itself closes only
        // when the connection's last holder lets go of it, which may wait on Redis).
        self.socket.shutdown();
        self.reader.wake();
        metrics::counter!(m::CLOSES, "code" => close_label(&end)).increment(1);
        if end == WriterEnd::Closed(1013) {
            metrics::counter!(m::QUEUE_OVERFLOWS).increment(1);
        }
    }
}

/// The `code` label of a close: the codes the gateway sends, and the peer's codes it
/// echoes as `other` (a label taken from the peer would make a series per code it sends).
fn close_label(end: &WriterEnd) -> &'static str {
    match end {
        WriterEnd::Closed(code) => match *code {
            1000 => "1000",
            1001 => "1001",
            1002 => "1002",
            1007 => "1007",
            1008 => "1008",
            1009 => "1009",
            1011 => "1011",
            1012 => "1012",
            1013 => "1013",
            4000 => "4000",
            4001 => "4001",
            4003 => "4003",
            4029 => "4029",
            _ => "other",
        },
        _ => "none",
    }
}

#[cfg(test)]
mod tests;
