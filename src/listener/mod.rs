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
use bytes::Bytes;
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
        let mut reused = false;
        loop {
            if reused {
                stream = self.idle(stream, shutdown).await?;
            }
            let mut session = self.read_head(stream, &head).await?;
            self.handler.serve(&mut session).await;
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Ending the request writes what is left of the answer's framing and reads what is left of a
            // body the connection is kept for: a peer that does neither in time loses the connection.
            let finished = tokio::time::timeout(self.limits.header_timeout, session.finish()).await;
            stream = finished.ok()?.ok().flatten()?.into_parts().0;
            reused = true;
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

    /// Waits on a kept-alive connection for the first byte of its next request (peeked, so the head
    /// parser still reads it): `None` when the peer closes, the idle allowance passes, or the server
    /// shuts down.
    async fn idle(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return None;
        }
        let mut first = [0u8; 1];
        tokio::select! {
            peeked = tokio::time::timeout(self.limits.keepalive, stream.try_peek(&mut first)) => {
                matches!(peeked, Ok(Ok(true))).then_some(stream)
            }
            _ = shutdown.changed() => None,
        }
    }

    /// Reads one request head within `header_timeout`; `None` when the peer closed, the deadline passed or
    /// the head was refused. A malformed head is answered 400 and one over the size bound 431, both with
    /// the connection closed.
    async fn read_head(&self, stream: Stream, head: &HeadState) -> Option<ServerSession> {
        let mut session = ServerSession::new_http1(stream);
        head.begin();
        let read = tokio::time::timeout(self.limits.header_timeout, session.read_request()).await;
        let over_size = head.over_limit(self.limits.max_header_bytes);
        head.end();
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
