//! A connection's socket after the upgrade, plain TCP or TLS, split into the half the
//! session reads frames from and the half its outlet writes to. The write half is used
//! without waiting and without `&mut` (any task that sends writes through it while the
//! connection is idle), so it is not an `AsyncWrite`: `try_write`, `pending`, `writable`.

pub mod certificates;
mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub use tls::{Handshake, handshake};

/// The half a session reads frames from.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tls::TlsRead),
}

/// The half an outlet writes frames to.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tls::TlsWrite),
}

/// The halves of an upgraded connection and the bytes hyper read past the handshake
/// (decrypted, with TLS); `None` when the connection is neither a TCP nor a TLS stream.
pub fn split(upgraded: Upgraded) -> Option<(ReadHalf, WriteHalf, Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            return Some((
                ReadHalf::Plain(read),
                WriteHalf::Plain(write),
                parts.read_buf,
            ));
        }
        Err(upgraded) => upgraded,
    };
    let parts = upgraded
        .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
        .ok()?;
    let (tcp, session) = parts.io.into_inner().into_inner();
    let (read, write) = tls::split(tcp, session);
    Some((ReadHalf::Tls(read), WriteHalf::Tls(write), parts.read_buf))
}

impl ReadHalf {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ReadHalf::Plain(read) => read.as_ref(),
            ReadHalf::Tls(read) => read.tcp(),
        }
    }

    /// Ready when a read would find something: bytes on the socket, or (TLS) bytes
    /// decrypted earlier and not read yet.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadHalf::Plain(read) => read.as_ref().poll_read_ready(cx),
            ReadHalf::Tls(read) => read.poll_read_ready(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::Tls(read) => read.poll_read(cx, buf),
        }
    }
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting (`WouldBlock` when it takes
    /// nothing). With TLS, bytes taken may still wait as ciphertext (`pending`); they go
    /// out first on the next call, and nothing new is taken before they did.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(write) => write.try_write(buf),
            WriteHalf::Tls(write) => write.try_write(buf),
        }
    }

    /// Whether bytes taken wait to be written (TLS ciphertext): a `try_write` of nothing
    /// writes them.
    pub fn pending(&self) -> bool {
        match self {
            WriteHalf::Plain(_) => false,
            WriteHalf::Tls(write) => write.pending(),
        }
    }

    /// Waits until the socket takes bytes again.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(write) => write.writable().await,
            WriteHalf::Tls(write) => write.tcp().writable().await,
        }
    }

    /// Ends the sending side: the peer learns at once that nothing follows (with TLS,
    /// after a `close_notify`).
    pub fn shutdown(&self) {
        let tcp = match self {
            WriteHalf::Plain(write) => write.as_ref(),
            WriteHalf::Tls(write) => {
                write.close_notify();
                write.tcp()
            }
        };
        let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    }
}
