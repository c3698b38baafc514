//! The writer task of a connection: started when something is queued, it writes
//! everything queued so far with one syscall, waits for the socket when it is full, and
//! ends once the queue is drained, or closes the connection.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use teamchat_shared::metrics as m;

use super::frame::{push, weight};
use crate::transport::WriteHalf;

use super::{KEEP_SLOTS, Outbound, Outlet, SLOW_WRITE_GRACE, Shared, Taken, WriterEnd};

impl Shared {
    /// Takes what is queued into the buffer (a close asked for first), or learns that
    /// nothing is left.
    pub(super) fn take(&self, buffer: &mut BytesMut) -> Taken {
        let mut state = self.lock();
        if state.done {
            return Taken::Stopped;
        }
        // The rest of frames written in part goes first, whatever follows.
        if let Some(rest) = state.rest.take() {
            state.queued_bytes = unweigh(state.queued_bytes, rest.len());
            buffer.extend_from_slice(&rest);
        }
        let code = self.close.load(Ordering::Acquire);
        if code != 0 {
            let reason = match code {
                1012 => "stream reset; rejoin with since",
                1011 => "internal error; rejoin with since",
                1000 | 4001 | 4003 => "disconnected by the server",
                _ => "too slow",
            };
            // What is queued is dropped (the rest of a frame written in part is not).
            state.queue.clear();
            state.queued_bytes = 0;
            return Taken::Frames(push(
                buffer,
                Outbound::close(code, reason),
                self.encoding,
                self.deflate,
            ));
        }
        if state.queue.is_empty() && buffer.is_empty() && !self.socket.pending() {
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
            state.queued_bytes = unweigh(state.queued_bytes, weight(&item, self.encoding));
            closed = push(buffer, item, self.encoding, self.deflate);
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
}

/// What the queue weighs without `taken`: everything taken was counted when queued (a
/// test build checks it; a miscount must not close every connection of a gateway later).
fn unweigh(queued: usize, taken: usize) -> usize {
    debug_assert!(taken <= queued, "the send queue's bytes miscounted");
    queued.saturating_sub(taken)
}

/// A writer: writes what is queued until the queue is drained or the connection closes.
pub(super) async fn run(outlet: Outlet) {
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
    let stall = Duration::from_millis(u64::from(shared.limits.stall_ms));
    let write = write_all(&shared.socket, buffer, stall);
    tokio::pin!(write);
    tokio::select! {
        written = &mut write => written.is_ok(),
        _ = shared.close_asked() => matches!(tokio::time::timeout(SLOW_WRITE_GRACE, write).await, Ok(Ok(()))),
    }
}

/// Writes all of `buffer`, waiting for the socket when it is full, but not longer than
/// `stall` each time: a peer whose socket takes nothing for that long is not reading.
/// Bytes taken but not yet written (TLS ciphertext) are written too.
async fn write_all(socket: &WriteHalf, mut buffer: &[u8], stall: Duration) -> std::io::Result<()> {
    while !buffer.is_empty() || socket.pending() {
        match try_write(socket, buffer) {
            Ok(0) if !buffer.is_empty() => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buffer = &buffer[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::timeout(stall, socket.writable())
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One write call to the socket, counted: frames out over writes shows how well frames
/// are coalesced.
pub(super) fn try_write(socket: &WriteHalf, buffer: &[u8]) -> std::io::Result<usize> {
    metrics::counter!(m::SOCKET_WRITES).increment(1);
    socket.try_write(buffer)
}
