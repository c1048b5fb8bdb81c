//! One exchange with the app: a buffered request out, the response header back.
//!
//! Deliveries are verified before a byte goes upstream, so their bodies are read whole in
//! `request_filter`. Pingora's proxy loop can replay such a body only from its 64 KiB retry buffer, so
//! deliveries are sent here, on Pingora's pooled HTTP/1 connector, and any size up to `max_body_bytes`
//! works. Paths forwarded without verification still take Pingora's streaming proxy path.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::UpstreamConfig;

/// The app could not give an answer; the sender gets this status and will retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFailure {
    /// Refused, reset, closed: 502.
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

    fn of(e: &Error) -> Self {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                AppFailure::Timeout
            }
            _ => AppFailure::Unreachable,
        }
    }
}

/// The app, with a pool of keep-alive connections to it.
pub struct App {
    connector: Connector,
    peer: HttpPeer,
    keepalive: Duration,
    read_timeout: Duration,
}

/// An exchange whose response header has arrived; the body is still to be read.
pub struct Exchange {
    session: HttpSession,
}

impl App {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            connector: Connector::new(None),
            peer: peer(cfg),
            keepalive: cfg.keepalive_timeout,
            read_timeout: cfg.read_timeout,
        }
    }

    /// The peer for Pingora's own proxy path (`other_paths = "forward"`).
    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Sends the request and waits for the app's final response header.
    ///
    /// A pooled connection the app closed while idle fails on first use; such a failure is retried on
    /// another connection, at most twice. A fresh connection's failure is final.
    pub async fn send(&self, req: &RequestHeader, body: &Bytes) -> Result<Exchange, AppFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut session, reused) =
                self.connector
                    .get_http_session(&self.peer)
                    .await
                    .map_err(|e| {
                        log::warn!("app unreachable at {}: {}", self.peer, e.etype().as_str());
                        AppFailure::of(&e)
                    })?;
            // The connector does not carry the peer's timeouts over to the session; each read and
            // write is bounded here.
            session.read_timeout = Some(self.read_timeout);
            session.write_timeout = Some(self.read_timeout);
            match exchange(&mut session, req, body).await {
                Ok(()) => return Ok(Exchange { session }),
                Err(e) if reused && attempt < 3 && stale(&e) => {
                    log::debug!(
                        "pooled connection to the app was stale: {}",
                        e.etype().as_str()
                    );
                }
                Err(e) => {
                    log::warn!("app exchange failed: {}", e.etype().as_str());
                    return Err(AppFailure::of(&e));
                }
            }
        }
    }

    /// Returns the connection to the pool when the exchange allows it.
    pub async fn finish(&self, exchange: Exchange) {
        self.connector
            .release_http_session(exchange.session, &self.peer, Some(self.keepalive))
            .await;
    }
}

impl Exchange {
    pub fn header(&self) -> &ResponseHeader {
        self.session
            .resp_header()
            .expect("an exchange exists only once the header was read")
    }

    pub fn status(&self) -> u16 {
        self.header().status.as_u16()
    }

    /// The next piece of the response body; `None` at its end.
    pub async fn body_chunk(&mut self) -> Result<Option<Bytes>, Box<Error>> {
        self.session.read_body_bytes().await
    }
}

async fn exchange(
    session: &mut HttpSession,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<(), Box<Error>> {
    // Pingora flushes the header and the body separately; corked, they leave in one segment, so the app
    // is woken once per delivery instead of twice.
    let fd = session.stream().id();
    set_cork(fd, true);
    let written = async {
        session.write_request_header(Box::new(req.clone())).await?;
        if !body.is_empty() {
            session.write_body(body).await?;
        }
        session.finish_body().await
    }
    .await;
    set_cork(fd, false);
    written?;
    // Skip informational answers (100 Continue, 103 Early Hints); the final one follows.
    for _ in 0..8 {
        session.read_response().await?;
        let informational = session
            .resp_header()
            .is_some_and(|h| h.status.is_informational());
        if !informational {
            return Ok(());
        }
    }
    Error::e_explain(
        ErrorType::InvalidHTTPHeader,
        "too many informational responses",
    )
}

/// TCP_CORK: hold partial frames until uncorked. Best effort: without it the request is only split.
fn set_cork(fd: i32, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: `fd` is the live socket of the session borrowed by the caller; `v` outlives the call and
    // its size is passed along.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Errors that mean "this kept-alive connection was already dead", not "the app failed".
fn stale(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
}

fn peer(cfg: &UpstreamConfig) -> HttpPeer {
    let mut peer = HttpPeer::new(cfg.socket_addr, false, String::new());
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(cfg.keepalive_timeout);
    peer
}
