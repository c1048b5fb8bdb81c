//! The webhook listener's requests: the adapter between Pingora's HTTP/1 server session (handed over by
//! `server::listener` with the head read) and the sidecar's own steps. A request goes, top to bottom:
//!
//! ```text
//!   route          target form and canonical path (route.rs): 400 other forms or    mod.rs
//!     │            ambiguous paths; not a webhook path: 404, or pass-through
//!     ├─ pass-through (other_paths = "forward"): streamed, unverified             passthrough.rs
//!     └─ deliver                                                                   pipeline.rs
//!        admit         405 not POST, 413 declared too large                        pipeline.rs
//!        authenticate  JWT only: the token before the body (403 / 503)             pipeline.rs -> auth/
//!        read body     413 too large, 503 over the memory budget, 408 too slow      body.rs
//!        authenticate  403 forged, 503 cannot decide (shadow mode: on we go)       pipeline.rs -> auth/
//!        identify      400 missing or ambiguous X-Pps-* (read before, trusted now) pipeline.rs -> delivery.rs
//!        filter        403 outside an allow-list                                   pipeline.rs
//!        claim         duplicate: the remembered 2xx; in flight: 503               pipeline.rs -> dedup/
//!        forward       the head for the app; 502 / 504 when it fails               forward.rs -> rewrite.rs, upstream/
//!        relay         the app's answer to the sender                              relay.rs
//!        settle        the claim (commit only the app's whole 2xx) and the spool   forward.rs (Stake) -> dedup/, spool/
//!     │
//!   record         one access line, the request counted by outcome                 mod.rs -> access_log.rs
//! ```
//!
//! Each step returns `Result<_, Reply>`; the pipeline records how the delivery ended in one value
//! (`ended.rs`), which is all this adapter writes to the log and the metrics.

mod access_log;
mod body;
mod ended;
mod forward;
mod passthrough;
mod pipeline;
mod relay;
mod reply;
mod rewrite;
mod span;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use crate::config::OtherPaths;
use crate::metrics::METRICS;
use crate::outcome::Outcome;
use crate::route::{Route, Target};
use crate::state::{Live, Shared};
use ended::Ended;
use reply::Reply;

pub use forward::Stake;

/// The webhook listener's handler.
pub struct Webhooks {
    pub shared: Arc<Shared>,
}

/// One request being served, with the configuration it started under.
pub struct Request<'a> {
    pub session: &'a mut ServerSession,
    pub live: &'a Live,
    pub shared: &'a Shared,
    /// The sender's `X-Request-Id` when it is a safe token, else a fresh one: the access line's and the app's.
    pub request_id: String,
    /// Its place in its trace: the app's `traceparent`, the access line's `trace_id`, the spans.
    pub trace: crate::trace::Context,
}

impl Request<'_> {
    pub fn req(&self) -> &RequestHeader {
        self.session.req_header()
    }

    /// Sends the sidecar's own answer and ends the request with it.
    async fn stop(&mut self, ended: Ended, reply: Reply) -> Ended {
        reply.send(self.session, self.write_limit()).await;
        ended.replied(&reply)
    }

    /// How long a sender may take to read an answer of the sidecar's own.
    fn write_limit(&self) -> Duration {
        self.live.config.server.body_timeout
    }
}

#[async_trait]
impl crate::listener::Handler for Webhooks {
    async fn serve(&self, session: &mut ServerSession) {
        let started = Instant::now();
        let _in_flight = METRICS.in_flight();
        let live = self.shared.live();
        let trace =
            crate::trace::Context::start(&session.req_header().headers, live.tracer.as_deref());
        // Spans are built only for a request that is exported.
        let wall_start = trace.recording.then(SystemTime::now);
        let mut rq = Request {
            request_id: rewrite::request_id(session.req_header()),
            trace,
            session,
            live: &live,
            shared: &self.shared,
        };
        if self.shared.draining() {
            // The pod is leaving its Service: the sender's next request goes to another replica.
            rq.session.set_keepalive(None);
        }
        let ended = route(&mut rq).await;
        METRICS.request(ended.outcome);
        METRICS.observe_request(started.elapsed());
        access_log::write(
            rq.req(),
            &ended,
            &rq.request_id,
            &rq.trace,
            started,
            live.config.server.log_format,
        );
        if let (Some(tracer), Some(wall_start)) = (&live.tracer, wall_start) {
            tracer.record(span::finished(&rq, &ended, (wall_start, started)));
        }
    }
}

/// Routes the request on its target as sent: the app receives exactly the target that was routed.
async fn route(rq: &mut Request<'_>) -> Ended {
    let raw = rq.req().raw_path().to_vec();
    let Some(target) = Target::parse(&raw) else {
        log::info!("bad request: request target form");
        return rq
            .stop(
                Ended::claimed(None),
                Reply::bad_request("bad request: request target\n"),
            )
            .await;
    };
    if !plain_framing(rq.req()) {
        return rq
            .stop(
                Ended::claimed(None),
                Reply::bad_request("bad request: body framing\n"),
            )
            .await;
    }
    let webhooks = &rq.live.config.webhooks;
    match (webhooks.route(target.path()), webhooks.other_paths) {
        (Route::Webhook, _) => pipeline::deliver(rq, target).await,
        (Route::Ambiguous, _) => {
            log::info!("bad request: ambiguous path");
            let reply = Reply::bad_request("bad request: ambiguous path\n");
            rq.stop(Ended::claimed(None), reply).await
        }
        (Route::Other, OtherPaths::Reject) => {
            let reply = Reply::new(404, Outcome::NotFound, "not found\n");
            rq.stop(Ended::claimed(None), reply).await
        }
        (Route::Other, OtherPaths::Forward) => passthrough::forward(rq, target).await,
    }
}

/// A body framed by one plain length, or by one lone `chunked` coding: any other transfer coding would
/// reach the app decoded differently from what was verified, or not at all; and a length Pingora reads
/// leniently (`4, 4`) is one the sidecar's own framing would not pass on.
fn plain_framing(req: &RequestHeader) -> bool {
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let one_plain_length = match (lengths.next(), lengths.next()) {
        (None, _) => true,
        (Some(v), None) => {
            let v = v.as_bytes().trim_ascii();
            !v.is_empty() && v.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    let mut codings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    one_plain_length
        && match (codings.next(), codings.next()) {
            (None, _) => true,
            (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
            _ => false,
        }
}

fn client_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
