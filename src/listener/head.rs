//! A connection whose request heads may take only so many bytes of reads.
//!
//! Pingora 0.9 buffers up to 1 MiB of request head per connection before it gives up on it; the head
//! deadline bounds how long, not how much. 400 connections sending 1 MB heads without the final CRLF took
//! the process from 32 to 208 MiB. Reads are counted from the start of each head until the listener has
//! it whole; past `max_header_bytes` the read fails and the listener answers 431.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Where a connection is: reading a request head, or past it.
#[derive(Debug, Default)]
pub struct HeadState {
    reading: AtomicBool,
    read: AtomicUsize,
    /// Someone waits for the first byte of the head being read (a kept-alive connection's next request).
    waiting: AtomicBool,
    first_byte: Notify,
}

impl HeadState {
    /// The head being read has used up `max` bytes of reads.
    pub fn over_limit(&self, max: usize) -> bool {
        self.read.load(Ordering::Relaxed) >= max
    }

    /// A request starts: its head is counted from here.
    pub fn begin(&self) {
        self.read.store(0, Ordering::Relaxed);
        self.reading.store(true, Ordering::Release);
    }

    /// The head arrived whole.
    pub fn end(&self) {
        self.reading.store(false, Ordering::Release);
    }

    pub fn reading(&self) -> bool {
        self.reading.load(Ordering::Acquire)
    }

    /// Resolves when the first byte of the head being read arrives. Registered when called, before it is
    /// polled, so a byte that arrives in between is not missed; it never resolves for a byte read before.
    pub fn first_byte(&self) -> impl Future<Output = ()> + '_ {
        let arrived = self.first_byte.notified();
        self.waiting.store(true, Ordering::Release);
        arrived
    }

    /// `n` bytes of the head were read.
    fn counted(&self, n: usize) {
        let before = self.read.fetch_add(n, Ordering::Relaxed);
        if before == 0 && n > 0 && self.waiting.swap(false, Ordering::AcqRel) {
            self.first_byte.notify_waiters();
        }
    }
}

/// The stream of a connection, its reads capped while a head is read.
pub struct HeadCapped {
    inner: Stream,
    head: Arc<HeadState>,
    max: usize,
}

impl HeadCapped {
    pub fn new(inner: Stream, head: Arc<HeadState>, max: usize) -> Self {
        Self { inner, head, max }
    }
}

impl fmt::Debug for HeadCapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadCapped")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for HeadCapped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.reading() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let left = self
            .max
            .saturating_sub(self.head.read.load(Ordering::Relaxed));
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head over server.max_header_bytes",
            )));
        }
        if left >= buf.remaining() {
            // The cap does not bind this read: straight into `buf`, nothing to initialise.
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled {
                self.head.counted(buf.filled().len() - before);
            }
            return polled;
        }
        // A window of at most `left` bytes of `buf`, initialised first: a head is small, and this keeps
        // the capping free of `unsafe`.
        let window = buf.initialize_unfilled_to(left.min(buf.remaining()));
        let mut capped = ReadBuf::new(window);
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut capped);
        let n = capped.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(n);
            self.head.counted(n);
        }
        polled
    }
}

impl AsyncWrite for HeadCapped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// The rest is the stream's own: Pingora asks it for the peer address, timing and TLS state.

#[async_trait]
impl Shutdown for HeadCapped {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadCapped {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadCapped {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadCapped {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadCapped {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadCapped {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadCapped {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
