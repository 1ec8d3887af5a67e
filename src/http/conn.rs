//! What one client connection may hold: a slot among at most `max_connections`, and
//! no more than `idle_timeout` of silence in either direction. Together with hyper's
//! header timeout and the body timeout (`body_first`), a slow or stalled client cannot
//! hold a connection for long, and many of them cannot take every connection the
//! process can open. No database transaction ever waits on a client: bodies are read
//! before any handler runs, and writes run in tasks of their own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

/// Connection bounds (see `ServeOptions`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// Accepts a TCP connection only while fewer than `max_connections` are open (a
/// connection over the limit is closed at once, before TLS, and counted in the
/// metrics), sets `TCP_NODELAY`, and closes a connection that stays silent for
/// `idle_timeout` reading or writing.
#[derive(Clone)]
pub struct Limited {
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl Limited {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(bounds.max_connections.max(1))),
            idle: bounds.idle_timeout,
        }
    }
}

/// An accepted connection: the socket, its timeouts and its slot, given back when it
/// is dropped.
pub struct Conn {
    io: Pin<Box<TimeoutStream<TcpStream>>>,
    _slot: OwnedSemaphorePermit,
}

impl<S: Send + 'static> Accept<TcpStream, S> for Limited {
    type Stream = Conn;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Conn, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = self.slots.clone().try_acquire_owned();
        let idle = self.idle;
        Box::pin(async move {
            let Ok(slot) = slot else {
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                return Err(io::Error::other("too many connections"));
            };
            // Small answers go out at once rather than waiting for more to send.
            let _ = stream.set_nodelay(true);
            let mut io = TimeoutStream::new(stream);
            io.set_read_timeout(Some(idle));
            io.set_write_timeout(Some(idle));
            Ok((
                Conn {
                    io: Box::pin(io),
                    _slot: slot,
                },
                service,
            ))
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}
