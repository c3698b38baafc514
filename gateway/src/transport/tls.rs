//! TLS on a connection: the handshake (bounded in time; a plain HTTP request on the TLS
//! port is answered 400, not left hanging), and after the upgrade one rustls session
//! shared by the two halves. The reader decrypts what arrives; the outlet encrypts what
//! it writes and writes without waiting, as on a plain socket. Ciphertext the socket did
//! not take stays in the session (`pending`) and goes out before more is taken.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::ServerConnection;
use teamchat_shared::metrics as m;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP on the TLS port.
const PLAIN_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 46\r\n\r\nthis port speaks TLS: use https:// or wss://\r\n";

/// How a TLS handshake ended.
pub enum Handshake {
    Done(Box<TlsStream<TcpStream>>),
    /// Not TLS, timed out, or refused (counted by reason; the connection is closed).
    Failed,
}

/// The server side of a TLS handshake, within `timeout` from now (the same bound a
/// client has to send its request head).
pub async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream, timeout: Duration) -> Handshake {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; 1];
    let reason = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => "timeout",
        Ok(Ok(1)) if first[0] == HANDSHAKE_RECORD => {
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => return Handshake::Done(Box::new(stream)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake refused");
                    "refused"
                }
                Err(_) => "timeout",
            }
        }
        Ok(Ok(1)) => {
            refuse_plain(stream).await;
            "plain_http"
        }
        // Closed (or failed) before a byte.
        Ok(_) => "refused",
    };
    metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    Handshake::Failed
}

/// Answers plain HTTP with 400 and a hint. The request is read first and the stream ended
/// before the socket is dropped: dropped with unread bytes, the kernel would reset the
/// connection and the client could lose the answer.
async fn refuse_plain(mut stream: TcpStream) {
    let refuse = async {
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut scratch)).await;
        stream.write_all(PLAIN_ANSWER).await?;
        stream.shutdown().await?;
        while stream.read(&mut scratch).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refuse).await;
}

/// What both halves share.
struct Tls {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

pub struct TlsRead(Arc<Tls>);

pub struct TlsWrite(Arc<Tls>);

/// The halves of a connection whose handshake is done.
pub(super) fn split(tcp: TcpStream, session: ServerConnection) -> (TlsRead, TlsWrite) {
    let shared = Arc::new(Tls {
        tcp,
        session: Mutex::new(session),
    });
    (TlsRead(shared.clone()), TlsWrite(shared))
}

/// The socket read and written without waiting, as rustls's `read_tls`/`write_tls` want
/// (`std::io` traits; `WouldBlock` when the socket has nothing or takes nothing).
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    /// Several records in one call (rustls writes what waits as a vector of records).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls {
    /// The session; a panic elsewhere while it was held does not stop the connection
    /// from being read and closed.
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the session's ciphertext until none is left, or the socket is full
    /// (`WouldBlock`).
    fn flush(&self, session: &mut ServerConnection) -> io::Result<()> {
        while session.wants_write() {
            if session.write_tls(&mut Nonblocking(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// The most plaintext a read hands over at once: a TLS record's worth (the reader's
/// buffer may be larger; only what is filled is initialised).
const RECORD: usize = 16 * 1024;

impl TlsRead {
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.0.tcp
    }

    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tls = &*self.0;
        loop {
            let mut session = tls.lock();
            let room = buf.remaining().min(RECORD);
            match session.reader().read(buf.initialize_unfilled_to(room)) {
                // 0: the peer's close_notify, the end of the stream.
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without a close_notify, among others.
                Err(e) => return Poll::Ready(Err(e)),
            }
            match session.read_tls(&mut Nonblocking(&tls.tcp)) {
                // Bytes, or the end of the stream: processed either way, so that the next
                // read returns the plaintext or says how the stream ended.
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // The alert telling the peer why, if the socket takes it.
                        let _ = tls.flush(&mut session);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // What reading owes the peer (a key update): out now if the socket
                    // takes it, else before the next frame written.
                    let _ = tls.flush(&mut session);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(session);
                    ready!(tls.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Ready when decrypted bytes wait, the peer closed, or the socket has bytes.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.lock().process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
            // A read says what is there, or what went wrong.
            _ => return Poll::Ready(Ok(())),
        }
        self.0.tcp.poll_read_ready(cx)
    }
}

impl TlsWrite {
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.0.tcp
    }

    /// Encrypts and writes what the socket takes now: ciphertext still waiting goes out
    /// first (`WouldBlock` while some is left); then as much of `buf` as the session takes
    /// is encrypted, and written as far as the socket takes it.
    pub(super) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let tls = &*self.0;
        let mut session = tls.lock();
        tls.flush(&mut session)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let taken = session.writer().write(buf)?;
        match tls.flush(&mut session) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(taken),
        }
    }

    pub(super) fn pending(&self) -> bool {
        self.0.lock().wants_write()
    }

    /// Tells the peer nothing follows, if the socket takes it now.
    pub(super) fn close_notify(&self) {
        let mut session = self.0.lock();
        session.send_close_notify();
        let _ = self.0.flush(&mut session);
    }
}
