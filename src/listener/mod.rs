//! A listener's connections: accepted within a bound, each request head read within its deadlines, the
//! request handed to a [`Handler`], the connection kept or closed. Both listeners (webhooks and admin) run
//! through it, each with its own [`ConnectionLimits`].
//!
//! This is Pingora's lower-level server API (`ServerApp` and its HTTP/1 `ServerSession`) rather than the
//! `ProxyHttp` framework: a delivery is read, verified and answered by the sidecar itself and sent to the
//! app by its own client, so the framework's phases, context and connector cost CPU on every request and
//! did nothing for it. Owning the connection loop also gives each limit one obvious place:
//!
//! - more than `max_connections` open: the new one is closed as soon as it is accepted;
//! - a new connection's first head must arrive whole within `header_timeout` of the accept;
//! - a kept-alive connection may stay idle `keepalive` for the first byte of its next head, which must
//!   then be whole within `header_timeout` of that byte (the idle allowance is not added to it);
//! - a head may take `max_header_bytes` of reads (`head.rs`): Pingora itself would buffer up to 1 MiB;
//! - once the server shuts down, an idle connection is closed and a busy one after its answer.
//!
//! A head that cannot be parsed is answered `400`, one over the size bound `431`, and the connection is
//! closed; a deadline missed closes it without an answer (there is no request to answer).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::ErrorType;
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;

mod head;

use crate::limits::ConnectionLimits;
use crate::metrics::METRICS;
use crate::outcome::Closed;
use head::{HeadCapped, HeadState};

/// What a listener does with one request whose head has been read. The listener then ends the request
/// (Pingora drains what is left of a body it may keep the connection for) and reuses or closes the
/// connection.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn serve(&self, session: &mut ServerSession);
}

/// One listening port's connections, served by `H` within `limits`.
pub struct Listener<H> {
    handler: H,
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    /// Open connections by peer address, when `limits.max_per_peer` bounds them.
    peers: Peers,
    /// Whether the connection metrics are this listener's (the webhook listener's).
    counted: bool,
}

impl<H> Listener<H> {
    pub fn new(handler: H, limits: ConnectionLimits, counted: bool) -> Self {
        Self {
            handler,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            peers: Arc::default(),
            limits,
            counted,
        }
    }

    fn closed(&self, why: Closed) {
        if self.counted {
            METRICS.connection_closed(why);
        }
    }
}

#[async_trait]
impl<H: Handler> ServerApp for Listener<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            self.closed(Closed::TooManyConnections);
            return None;
        };
        let Some(_peer) = self.peer_slot(&stream) else {
            self.closed(Closed::TooManyConnections);
            return None;
        };
        let _open = self.counted.then(|| METRICS.connection_open());
        let head = Arc::new(HeadState::default());
        let mut stream: Stream = Box::new(HeadCapped::new(
            stream,
            head.clone(),
            self.limits.max_header_bytes,
        ));
        let mut kept_alive = false;
        // Bytes of the next request read with the previous one (a pipelining client).
        let mut pipelined = None;
        loop {
            if kept_alive && *shutdown.borrow() {
                return None;
            }
            let mut session = self
                .read_head(stream, pipelined.take(), &head, kept_alive, shutdown)
                .await?;
            if self.limits.keepalive.is_zero() {
                session.set_keepalive(None);
            }
            self.handler.serve(&mut session).await;
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Ending the request writes what is left of the answer's framing and reads what is left of a
            // body the connection is kept for: a peer that does neither in time loses the connection.
            let finished = tokio::time::timeout(self.limits.header_timeout, session.finish()).await;
            (stream, pipelined) = finished.ok()?.ok().flatten()?.into_parts();
            kept_alive = true;
        }
    }
}

impl<H: Handler> Listener<H> {
    /// A slot for the connection's peer address within `max_per_peer` (always, when unbounded).
    fn peer_slot(&self, stream: &Stream) -> Option<PeerSlot> {
        let Some(max) = self.limits.max_per_peer else {
            return Some(PeerSlot(None));
        };
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
        let Some(ip) = ip else {
            return Some(PeerSlot(None));
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let open = peers.entry(ip).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(PeerSlot(Some((self.peers.clone(), ip))))
    }

    /// Reads one request head; `None` when the peer closed, a deadline passed, the server shuts down while
    /// the connection idles, or the head was refused. A malformed head is answered 400 and one over the
    /// size bound 431, both with the connection closed.
    async fn read_head(
        &self,
        stream: Stream,
        pipelined: Option<BytesMut>,
        head: &HeadState,
        kept_alive: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<ServerSession> {
        let mut session = ServerSession::new_http1(stream);
        // A request sent before the previous one was answered is read from what was read with that one,
        // not lost with it (a pipelined request used to wait unanswered until the keep-alive timeout).
        session.set_pipelining_enabled(true);
        // A head that began to arrive with the previous request has its deadline from now.
        let idle = kept_alive && pipelined.is_none();
        if let Some(prefix) = pipelined {
            session.set_pipelined_prefix(prefix);
        }
        head.begin();
        let read = self
            .within_deadlines(session.read_request(), head, idle, shutdown)
            .await;
        let over_size = head.over_limit(self.limits.max_header_bytes);
        head.end();
        let read = match read {
            Ok(read) => Ok(read),
            Err(Missed::Idle) => return None,
            Err(Missed::Head) => Err(()),
        };
        match read {
            Ok(Ok(true)) => Some(session),
            Ok(Ok(false)) => None,
            Ok(Err(e)) => {
                // Only the error's type: its message quotes the head, credentials included.
                log::debug!("request head refused: {}", e.etype().as_str());
                let status = match (over_size, &e.etype) {
                    (true, _) => 431,
                    (false, ErrorType::InvalidHTTPHeader) => 400,
                    _ => return None,
                };
                refuse(&mut session, status).await;
                None
            }
            Err(_) => {
                self.closed(Closed::HeaderTimeout);
                None
            }
        }
    }
}

/// Which deadline a request head missed.
enum Missed {
    /// A kept-alive connection stayed idle for `keepalive` (or the server began to shut down): closed
    /// quietly, as any idle connection.
    Idle,
    /// The head did not arrive whole within `header_timeout`.
    Head,
}

impl<H> Listener<H> {
    /// Runs `read` (reading a request head) within the listener's deadlines: a new connection's head within
    /// `header_timeout` of the accept; a kept-alive connection may idle for `keepalive`, and its next head
    /// then has `header_timeout` from its first byte. The idle wait reads nothing ahead (no peek): the
    /// head's own read is what waits, so a request costs no extra system call.
    async fn within_deadlines<F: Future>(
        &self,
        read: F,
        head: &HeadState,
        kept_alive: bool,
        shutdown: &ShutdownWatch,
    ) -> Result<F::Output, Missed> {
        let mut read = std::pin::pin!(read);
        if kept_alive {
            let first_byte = head.first_byte();
            let mut shutdown = shutdown.clone();
            tokio::select! {
                done = &mut read => return Ok(done),
                () = first_byte => {}
                _ = tokio::time::sleep(self.limits.keepalive) => return Err(Missed::Idle),
                _ = shutdown.changed() => return Err(Missed::Idle),
            }
        }
        tokio::time::timeout(self.limits.header_timeout, read)
            .await
            .map_err(|_| Missed::Head)
    }
}

/// A connection's share of its peer's bound, given back when the connection ends.
struct PeerSlot(Option<(Peers, IpAddr)>);

/// Open connections by peer address.
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some((peers, ip)) = self.0.take() {
            let mut peers = peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = peers.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    peers.remove(&ip);
                }
            }
        }
    }
}

/// Answers a head that could not be read, and gives up the connection.
async fn refuse(session: &mut ServerSession, status: u16) {
    let body: &'static [u8] = match status {
        431 => b"request header too large\n",
        _ => b"bad request\n",
    };
    let Ok(mut resp) = ResponseHeader::build(status, Some(3)) else {
        return;
    };
    let _ = resp.insert_header("Content-Type", "text/plain; charset=utf-8");
    let _ = resp.insert_header("Content-Length", body.len());
    let _ = resp.insert_header("Connection", "close");
    session.set_keepalive(None);
    let write = async {
        session.write_response_header(Box::new(resp)).await?;
        session
            .write_response_body(Bytes::from_static(body), true)
            .await
    };
    // A peer that does not read its refusal is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
