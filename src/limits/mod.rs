//! Resource limits of the webhook listener: nothing a sender controls holds memory or a connection
//! without a bound.
//!
//! Pingora 0.9 bounds neither the whole of a request head (its timeout is per read, so a head trickled a
//! byte at a time is held forever), nor an idle kept-alive connection (infinite after the first request),
//! nor the number of connections. `Listener` wraps its HTTP app to add all three:
//!
//! - a connection over `server.max_connections` is closed as soon as it is accepted;
//! - a request head must arrive whole within `header_timeout`, counted from the start of the request on a
//!   new connection and from the end of the keep-alive allowance on a reused one; otherwise the connection
//!   is closed (there is no request to answer);
//! - the idle wait for the next request is Pingora's keep-alive timeout, set on every request
//!   (`proxy::Sidecar::early_request_filter`).
//!
//! - a request head may take at most `server.max_header_bytes` of reads (`head.rs`): Pingora itself
//!   buffers up to 1 MiB of head per connection, which 400 stalled connections turned into 208 MiB.
//!
//! Bodies are bounded by `BodyBudget` (`budget.rs`): bytes held across all connections, reserved before
//! they are read.

mod budget;
mod head;

pub use budget::{BodyBudget, Reservation};

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;

use crate::metrics::METRICS;
use crate::outcome::Closed;
use head::{HeadCapped, HeadState};

tokio::task_local! {
    /// The connection this task serves.
    static CONNECTION: Connection;
}

/// What the listener knows of one connection.
struct Connection {
    /// Requests started on it.
    requests: Cell<u32>,
    head: Arc<HeadState>,
}

/// Tells the listener that the current request's head arrived whole (called from the first proxy phase).
pub fn head_read() {
    let _ = CONNECTION.try_with(|c| c.head.end());
}

/// The limits of one connection, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub keepalive: Duration,
    pub max_header_bytes: usize,
}

/// The webhook listener's app: Pingora's HTTP proxy with a connection bound and a head deadline.
pub struct Listener<A> {
    http: Arc<HeadDeadline<A>>,
    connections: Arc<Semaphore>,
}

impl<A> Listener<A> {
    pub fn new(app: A, max_connections: usize, limits: ConnectionLimits) -> Self {
        Self {
            http: Arc::new(HeadDeadline {
                app: Arc::new(app),
                limits,
            }),
            connections: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Listener<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Dropping the stream closes the connection: no request has been read to answer.
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            METRICS.connection_closed(Closed::TooManyConnections);
            return None;
        };
        let _open = METRICS.connection_open();
        let head = Arc::new(HeadState::default());
        let stream: Stream = Box::new(HeadCapped::new(
            stream,
            head.clone(),
            self.http.limits.max_header_bytes,
        ));
        let connection = Connection {
            requests: Cell::new(0),
            head,
        };
        CONNECTION
            .scope(connection, self.http.process_new(stream, shutdown))
            .await
    }

    async fn cleanup(&self) {
        self.http.app.http_cleanup().await;
    }
}

/// One request at a time of a connection, with the deadline for its head.
struct HeadDeadline<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeadDeadline<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let (earlier, head) = CONNECTION
            .try_with(|c| (c.requests.replace(c.requests.get() + 1), c.head.clone()))
            .unwrap_or_else(|_| (0, Arc::default()));
        head.begin();
        let deadline = if earlier == 0 {
            self.limits.header_timeout
        } else {
            self.limits.keepalive + self.limits.header_timeout
        };
        let request = self.app.process_new_http(session, shutdown);
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => return done,
            () = tokio::time::sleep(deadline) => {}
        }
        if !head.reading() {
            request.await
        } else {
            if earlier == 0 {
                METRICS.connection_closed(Closed::HeaderTimeout);
            }
            None
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await;
    }
}
