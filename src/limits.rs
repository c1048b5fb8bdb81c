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
//! Bodies are bounded by `BodyBudget`: bytes held across all connections, reserved before they are read.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;

use crate::metrics::METRICS;
use crate::outcome::Closed;

tokio::task_local! {
    /// Requests started on the connection this task serves.
    static REQUESTS: Cell<u32>;
    /// Set once the current request's head has been read whole.
    static HEAD_READ: Arc<AtomicBool>;
}

/// Tells the listener that the current request's head arrived whole (called from the first proxy phase).
pub fn head_read() {
    let _ = HEAD_READ.try_with(|seen| seen.store(true, Ordering::Release));
}

/// The timeouts of a connection, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    pub header: Duration,
    pub keepalive: Duration,
}

/// The webhook listener's app: Pingora's HTTP proxy with a connection bound and a head deadline.
pub struct Listener<A> {
    http: Arc<HeadDeadline<A>>,
    connections: Arc<Semaphore>,
}

impl<A> Listener<A> {
    pub fn new(app: A, max_connections: usize, timeouts: ConnectionTimeouts) -> Self {
        Self {
            http: Arc::new(HeadDeadline {
                app: Arc::new(app),
                timeouts,
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
        REQUESTS
            .scope(Cell::new(0), self.http.process_new(stream, shutdown))
            .await
    }

    async fn cleanup(&self) {
        self.http.app.http_cleanup().await;
    }
}

/// One request at a time of a connection, with the deadline for its head.
struct HeadDeadline<A> {
    app: Arc<A>,
    timeouts: ConnectionTimeouts,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeadDeadline<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let earlier = REQUESTS.try_with(|n| n.replace(n.get() + 1)).unwrap_or(0);
        let deadline = if earlier == 0 {
            self.timeouts.header
        } else {
            self.timeouts.keepalive + self.timeouts.header
        };
        let seen = Arc::new(AtomicBool::new(false));
        let request = HEAD_READ.scope(seen.clone(), self.app.process_new_http(session, shutdown));
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => return done,
            () = tokio::time::sleep(deadline) => {}
        }
        if seen.load(Ordering::Acquire) {
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

/// Bytes of request bodies held in memory, all connections together, at most `max`.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
}

impl BodyBudget {
    /// Bytes held now, for the gauge.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize, max: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }
}

/// Bytes of the budget held by one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Reservation {
    /// Holds at least `total` bytes, or `false` when the budget (`max`) cannot give them.
    pub fn grow_to(&mut self, total: usize, max: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if !self.budget.take(more, max) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_budget_and_give_back_when_dropped() {
        let budget = Arc::new(BodyBudget::default());
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow_to(600, 1_000));
        assert!(!b.grow_to(500, 1_000), "over the budget");
        assert!(b.grow_to(400, 1_000));
        assert!(a.grow_to(500, 1_000), "shrinking holds what it has");
        assert_eq!(budget.held(), 1_000);
        drop(a);
        assert_eq!(budget.held(), 400);
        assert!(b.grow_to(1_000, 1_000));
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
