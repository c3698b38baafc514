//! The end of a closing handshake the gateway started (RFC 6455 §7.1.1): once its close
//! frame is written and its side of the TCP connection shut down, the socket is not
//! dropped while the peer may still be sending. Dropped with unread data, the kernel
//! answers with a reset, and a reset makes the peer's kernel throw away what it had not
//! read yet — the close frame, whose code the client needed (1008, 1009, 1013, 4001, …).
//! So what the peer still sends is read and thrown away until its close frame or the end
//! of its stream, within a time and a byte bound a hostile peer cannot stretch.

use std::io::ErrorKind;

use fastwebsockets::{Frame, OpCode};
use tokio::net::TcpStream;

use super::{CLOSE_GRACE, Reader};

/// Most bytes read and thrown away while waiting for the peer's close.
const LINGER_BYTES: usize = 16 << 20;

/// Reads what the peer sends after the gateway's close until the peer's close frame, the
/// end of its stream, `CLOSE_GRACE` or `LINGER_BYTES`.
pub(super) async fn linger(ws: &mut Reader) {
    let _ = tokio::time::timeout(CLOSE_GRACE, drain(ws)).await;
}

async fn drain(ws: &mut Reader) {
    let mut read = 0;
    // Owed answers (a pong, a close echo) are not sent: the gateway's close went first.
    let mut ignore = |_: Frame<'_>| std::future::ready(Ok::<_, std::io::Error>(()));
    // Frames while they parse: a peer that answers the close is done with its close frame
    // (it then waits for the gateway to end the TCP connection).
    loop {
        match ws.read_frame(&mut ignore).await {
            Ok(frame) if frame.opcode == OpCode::Close => return,
            Ok(frame) => {
                read += frame.payload.len();
                if read > LINGER_BYTES {
                    return;
                }
            }
            // The end of the stream, or a stream out of step (the close was for a
            // framing error): bytes until the end.
            Err(_) => break,
        }
    }
    // (Raw bytes, also under TLS: nothing in them is read any more.)
    discard(ws.get_ref().tcp(), read).await;
}

/// Reads and throws away bytes until the end of the stream or `LINGER_BYTES` in all.
async fn discard(socket: &TcpStream, mut read: usize) {
    let mut buffer = [0u8; 4096];
    while read <= LINGER_BYTES {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
