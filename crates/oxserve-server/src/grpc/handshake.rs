//! The handshake's deadline, gRPC C-core's `grpc.server_handshake_timeout_ms` (120 s by
//! default, as in TF Serving): a connection that has not finished its TLS handshake (see
//! `tls.rs`) and sent HTTP/2's preface and first SETTINGS frame by then is closed. hyper waits
//! for the preface for ever, so a client that connects and says nothing would hold its socket,
//! and enough of them would use up the process's file descriptors.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// gRPC C-core's default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// HTTP/2's client preface (24 bytes) and a frame header (9 bytes), that of its SETTINGS frame.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// A connection whose reads fail with `TimedOut` once `deadline` has passed, until the client
/// has sent the handshake's bytes.
pub struct HandshakeDeadline<S> {
    inner: S,
    /// `None` once the handshake's bytes have arrived, or with no deadline.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<S> HandshakeDeadline<S> {
    /// Must be called within a tokio runtime (the timer's).
    pub fn new(inner: S, deadline: Option<Instant>) -> HandshakeDeadline<S> {
        HandshakeDeadline {
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            received: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            if polled.is_ready() {
                this.received += buf.filled().len() - before;
                if this.received >= HANDSHAKE_BYTES {
                    this.deadline = None;
                }
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not finish the HTTP/2 handshake in time \
                     (grpc.server_handshake_timeout_ms)",
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for HandshakeDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_fail_after_the_deadline_until_the_handshake_is_in() {
        let (client, server) = tokio::io::duplex(1024);
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut silent = HandshakeDeadline::new(server, Some(deadline));
        let mut buf = [0u8; 64];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(Instant::now() >= deadline);
        drop(client);

        let (mut client, server) = tokio::io::duplex(1024);
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut talking = HandshakeDeadline::new(server, Some(deadline));
        client.write_all(&[0u8; HANDSHAKE_BYTES]).await.unwrap();
        let mut read = 0;
        while read < HANDSHAKE_BYTES {
            read += talking.read(&mut buf).await.unwrap();
        }
        // Past the deadline, a connection that has shaken hands may stay quiet.
        tokio::time::sleep_until(deadline + Duration::from_millis(100)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 5);
    }
}
