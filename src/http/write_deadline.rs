//! A socket whose writes fail once one has waited for the client past the deadline, and
//! the bytes a connection hands to hyper and writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a connection's answers hand to hyper, and what reaches the socket. hyper (HTTP/2
/// above all) buffers an answer after taking it from its body, so the difference is what
/// the client still owes reading; framing only adds to what is written.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) handed: AtomicU64,
    pub(super) written: AtomicU64,
}

/// The error of a write that made no progress within the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for the response write timeout")]
pub(super) struct WriteStalled;

/// A socket whose writes fail once one has waited for the client past the deadline: a
/// client that stops reading loses its connection, and the response buffered for it is
/// freed. The deadline runs from the first write that has to wait, and restarts with each
/// write that goes through.
pub(super) struct WriteDeadline {
    io: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written so far, for [`Stall`].
    progress: Arc<Progress>,
}

impl WriteDeadline {
    pub(super) fn new(io: TcpStream, limit: Duration, progress: Arc<Progress>) -> Self {
        WriteDeadline {
            io,
            limit,
            stalled: None,
            progress,
        }
    }

    fn count(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            let n = *n as u64;
            self.progress.written.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The outcome of a write: progress clears the deadline; waiting arms it, and past
    /// it, fails.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                WriteStalled,
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&written);
        self.deadline(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&written);
        self.deadline(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        self.deadline(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
