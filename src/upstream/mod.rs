//! The sidecar's HTTP/1.1 client for the app: both directions of HTTP/1 to the app live here, and this
//! module imports nothing of the sidecar's above the configuration.
//!
//! Deliveries are verified before a byte goes upstream, so their bodies are read whole first, and
//! Pingora's proxy loop could replay such a body only from its 64 KiB retry buffer. Deliveries are
//! therefore sent by this small client: the head and the body leave in one write, the answer is parsed
//! with `httparse`, and idle connections wait in a plain LIFO list. On Pingora's connector a delivery cost
//! nearly twice the CPU (73 against 36 to 45 us; a task spawned per idle connection, a timer per read and
//! write, the header map built and cloned, two flushes held together with `TCP_CORK`).
//!
//! Pass-through requests (`other_paths = "forward"`) are streamed on a connection of their own, closed
//! after the answer (`outgoing.rs`): whatever the app makes of an unverified body, no byte of it can be
//! read as the start of another request on a connection a delivery later uses.
//!
//! - `head.rs`: the request head's bytes and the hop-by-hop rules, sans-IO;
//! - `codec.rs`: the answer's bytes (head, chunked body), sans-IO and strict;
//! - `exchange.rs`: one request and its answer on one connection, with deadlines;
//! - `outgoing.rs`: a streamed pass-through request on a connection of its own;
//! - `pool.rs`: the idle connections.
//!
//! The resend rule: a delivery is sent again on another connection only when it demonstrably never left,
//! that is when a pooled connection turns out closed (reset, broken pipe) before the socket accepted a
//! single byte of the request. Once any byte was accepted, the app may have read the request and acted
//! on it, so a reset, an early close or silence after that is final (502 or 504) and the sender's own
//! retry, answered by the dedup record, decides. The cost: an app that closes an idle connection at the
//! very moment it is reused makes that delivery a 502, which the sender retries.

mod codec;
mod exchange;
pub mod head;
mod outgoing;
mod pool;

pub use outgoing::{Outgoing, Progress};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::Error;
use pingora::http::ResponseHeader;
use tokio::net::TcpStream;

use crate::config::{Deadlines, UpstreamConfig};
use codec::Chunked;
use pool::Pool;

/// The app could not give an answer; the sender gets this status and will retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFailure {
    /// Refused, reset, closed, unparsable: 502.
    Unreachable,
    /// No answer in time: 504.
    Timeout,
}

impl AppFailure {
    pub fn status(self) -> u16 {
        match self {
            AppFailure::Unreachable => 502,
            AppFailure::Timeout => 504,
        }
    }
}

/// Attempts at one delivery, at most: pooled connections found closed are skipped this many times.
const MAX_ATTEMPTS: usize = 3;

/// The app, with a pool of keep-alive connections to it.
pub struct App {
    addr: SocketAddr,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// See `send`.
    deadline: Duration,
    idle: Pool,
}

/// An exchange whose final response head has arrived; the body is still to be read.
pub struct Exchange {
    stream: TcpStream,
    buf: BytesMut,
    header: Option<ResponseHeader>,
    status: u16,
    body: BodyLeft,
    /// The app allows another request on this connection.
    keep_alive: bool,
    read_timeout: Duration,
}

/// What is left of the answer's body.
enum BodyLeft {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl App {
    /// `deadlines`: the whole exchange's, from `config::Deadlines`, within the dedup claims' lifetime.
    pub fn new(cfg: &UpstreamConfig, deadlines: Deadlines) -> Self {
        Self {
            deadline: deadlines.exchange,
            addr: cfg.socket_addr,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            idle: Pool::new(cfg.keepalive_timeout),
        }
    }

    /// Sends the request (`head` as built by `headers::upstream_head`, then `body`) and waits for the
    /// app's final response head.
    ///
    /// A pooled connection found closed before the request left is skipped for another, at most twice
    /// (the resend rule in the module header). A fresh connection's failure is final.
    ///
    /// The whole of it, retries and interim answers included, ends within `connect_timeout + 2 x
    /// read_timeout` (504 past that): the delivery's dedup claim lives a little longer than that
    /// (`config::Deadlines`), so a copy retried by the sender can never find the claim expired while this one is
    /// still with the app.
    pub async fn send(&self, head: Vec<u8>, body: &Bytes) -> Result<Exchange, AppFailure> {
        let deadline = self.deadline;
        tokio::time::timeout(deadline, self.attempts(head, body))
            .await
            .unwrap_or_else(|_| {
                log::warn!("app exchange failed: no answer within {deadline:?} in all");
                Err(AppFailure::Timeout)
            })
    }

    async fn attempts(&self, head: Vec<u8>, body: &Bytes) -> Result<Exchange, AppFailure> {
        let mut head = Some(head);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (stream, reused) = match self.idle.checkout() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            let last_try = !reused || attempt >= MAX_ATTEMPTS;
            // The head is only copied when a retry may still need it.
            let this_head = if last_try {
                head.take().unwrap_or_default()
            } else {
                head.clone().unwrap_or_default()
            };
            match Exchange::open(stream, this_head, body, self.read_timeout).await {
                Ok(exchange) => return Ok(exchange),
                Err(f) if f.unsent && !last_try => {
                    log::debug!("pooled connection to the app was stale: {}", f.what);
                }
                Err(f) => {
                    log::warn!("app exchange failed: {}", f.what);
                    return Err(f.failure);
                }
            }
        }
    }

    /// Returns the connection to the pool when the exchange allows it.
    pub fn finish(&self, exchange: Exchange) {
        if exchange.reusable() {
            self.idle.checkin(exchange.stream);
        }
    }

    async fn connect(&self) -> Result<TcpStream, AppFailure> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => {
                log::warn!("app unreachable at {}: {}", self.addr, e.kind());
                Err(AppFailure::Unreachable)
            }
            Err(_) => {
                log::warn!("app unreachable at {}: connect timed out", self.addr);
                Err(AppFailure::Timeout)
            }
        }
    }
}

impl Exchange {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The answer's head as it is relayed: hop-by-hop headers, those the app's `Connection` names and
    /// `Transfer-Encoding` dropped; `Content-Length` kept when the app sent one (never on a 204).
    pub fn take_header(&mut self) -> ResponseHeader {
        self.header
            .take()
            .expect("an exchange exists only once the head was read, and it is taken once")
    }

    /// The next piece of the response body; `None` at its end.
    pub async fn body_chunk(&mut self) -> Result<Option<Bytes>, Box<Error>> {
        self.next_chunk().await
    }
}

#[cfg(test)]
mod tests;
