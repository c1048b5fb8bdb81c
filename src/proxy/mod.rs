//! The webhook listener: Pingora's `ProxyHttp` phases, each a few lines that call the delivery steps.
//!
//! A request on a webhook path goes, top to bottom:
//!
//! ```text
//!   request_filter  route the canonical path (paths.rs): 400 ambiguous; not a webhook path: 404, or
//!        │          Pingora's streaming proxy (other_paths = "forward", X-Pps-Verified: none)
//!   admit           405 not POST, 413 declared too large                     deliver.rs
//!   read body       413 too large, 100 Continue when asked                   deliver.rs
//!   authenticate    403 forged, 503 cannot decide (shadow mode: on we go)    deliver.rs -> auth/
//!   read headers    400 missing or ambiguous X-Pps-*                         deliver.rs -> headers.rs
//!   filter          403 outside an allow-list                                deliver.rs
//!   claim           duplicate: the remembered 2xx; in flight: 503            deliver.rs -> dedup/
//!   forward         502 / 504 when the app fails; the claim is settled       deliver.rs -> upstream/
//!                   a verified delivery the app refused: spooled             deliver.rs -> spool/
//!   relay           the app's status, headers and body                       relay.rs
//!        │
//!   logging         one access line, the request counted by outcome          access_log.rs
//! ```
//!
//! Every step returns `Result<_, Reply>`: a `Reply` ends the delivery, and `Reply::send` records its
//! status and outcome (`Ctx::ended`), the one place besides a relayed answer where they are set.
//!
//! The body is read in `request_filter`, before anything goes upstream, and deliveries are then sent to
//! the app by the sidecar's own client (`upstream/`): Pingora's proxy loop could replay such a body only
//! from its 64 KiB retry buffer.

mod access_log;
mod deliver;
mod relay;
mod reply;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::auth::Verified;
use crate::config::OtherPaths;
use crate::headers::{self, Delivery};
use crate::metrics::{InFlight, METRICS};
use crate::outcome::Outcome;
use crate::paths::Route;
use crate::state::{Live, Shared};
use reply::Reply;

pub struct Sidecar {
    pub shared: Arc<Shared>,
}

/// Per-request state, for the access log.
pub struct Ctx {
    started: Instant,
    live: Option<Arc<Live>>,
    outcome: Option<Outcome>,
    status: u16,
    delivery: Option<Delivery>,
    app_time: Option<Duration>,
    request_id: String,
    /// Why authentication failed, when it did.
    auth_failure: Option<&'static str>,
    _in_flight: InFlight,
}

impl Ctx {
    /// The request's answer and what it stands for.
    fn ended(&mut self, status: u16, outcome: Outcome) {
        self.status = status;
        self.outcome = Some(outcome);
    }
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            live: None,
            outcome: None,
            status: 0,
            delivery: None,
            app_time: None,
            request_id: String::new(),
            auth_failure: None,
            _in_flight: METRICS.in_flight(),
        }
    }

    /// The head has arrived whole: the listener's head deadline is met, and the idle wait for the
    /// connection's next request is bounded (Pingora's own default is to wait forever).
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::limits::head_read();
        // The configuration this request is served under, from its first phase to its access line.
        let live = self.shared.live();
        // Only where Pingora keeps the connection (not HTTP/1.0 without keep-alive, not while shutting down).
        if session.get_keepalive().is_some() {
            let idle = live.config.server.keepalive_timeout;
            session.set_keepalive(Some(idle.as_secs().max(1)));
        }
        ctx.live = Some(live);
        Ok(())
    }

    /// `Ok(true)`: the request was answered here (every webhook path); `Ok(false)`: Pingora proxies it to
    /// the app (pass-through of other paths).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = ctx.live.clone().unwrap_or_else(|| self.shared.live());
        ctx.request_id = headers::request_id(session.req_header());
        let webhooks = &live.config.webhooks;
        let reply = match (
            webhooks.route(session.req_header().uri.path()),
            webhooks.other_paths,
        ) {
            (Route::Webhook, _) => {
                self.deliver(session, ctx, &live).await?;
                return Ok(true);
            }
            (Route::Ambiguous, _) => {
                log::info!("bad request: ambiguous path");
                Reply::new(400, Outcome::BadRequest, "bad request: ambiguous path\n").close()
            }
            (Route::Other, OtherPaths::Reject) => Reply::new(404, Outcome::NotFound, "not found\n"),
            (Route::Other, OtherPaths::Forward) => {
                // Pingora streams a pass-through body and answer; each read and write is bounded (the
                // whole of them is not: pass-through is the app's own traffic, not a delivery).
                let bound = live.config.server.body_timeout;
                session.set_read_timeout(Some(bound));
                session.set_write_timeout(Some(bound));
                ctx.outcome = Some(Outcome::Forwarded);
                return Ok(false);
            }
        };
        reply.send(session, ctx).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone().unwrap_or_else(|| self.shared.live());
        Ok(Box::new(live.app.peer().clone()))
    }

    /// Pass-through only: deliveries never reach Pingora's upstream phases.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ip = client_ip(session);
        headers::sanitize_passthrough(upstream, ip.as_deref(), &ctx.request_id);
        Ok(())
    }

    /// Pass-through only: the app's answer loses its hop-by-hop headers.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        headers::sanitize_passthrough_response(upstream);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // What the sender got: Pingora's own error answer when relaying failed after the app's head.
        if let Some(written) = session.response_written() {
            ctx.status = written.status.as_u16();
        }
        if ctx.outcome == Some(Outcome::Forwarded) && (ctx.status >= 500 || e.is_some()) {
            ctx.outcome = Some(Outcome::UpstreamError);
        }
        if let Some(outcome) = ctx.outcome {
            METRICS.request(outcome);
        }
        METRICS.observe_request(ctx.started.elapsed());
        access_log::write(session, ctx);
    }
}

impl Sidecar {
    /// One delivery, step by step (see the module header).
    async fn deliver(&self, session: &mut Session, ctx: &mut Ctx, live: &Live) -> Result<()> {
        match self.steps(session, ctx, live).await {
            Ok(forwarded) => {
                // An app 5xx makes Pitchpoint retry, as a 502 or 504 would: both count as upstream errors.
                let status = forwarded.exchange.status();
                let outcome = if status >= 500 {
                    Outcome::UpstreamError
                } else {
                    Outcome::Forwarded
                };
                ctx.ended(status, outcome);
                // Bounded, so that the claim outlives it (`config::Deadlines`).
                let relaying = relay::relay(session, ctx, &live.app, forwarded.exchange);
                let relayed = tokio::time::timeout(live.deadlines.answer_body, relaying)
                    .await
                    .unwrap_or_else(|_| {
                        log::warn!("app answer body not whole in time");
                        Err(relay::RelayError::App(Error::explain(
                            ErrorType::ReadTimedout,
                            "the app's answer body",
                        )))
                    });
                let whole = !matches!(relayed, Err(relay::RelayError::App(_)));
                deliver::Settle::after(forwarded.claim, status, whole).await;
                if let (true, Some(spool), Some(d)) = (
                    whole && (200..300).contains(&status),
                    &live.config.spool,
                    &ctx.delivery,
                ) {
                    crate::spool::acknowledged(spool, &d.dedup_key()).await;
                }
                relayed.map_err(relay::RelayError::into_inner)
            }
            Err(reply) => reply.send(session, ctx).await,
        }
    }

    async fn steps(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Live,
    ) -> Result<deliver::Forwarded, Reply> {
        let cfg = &live.config;
        let declared = deliver::admit(session.req_header(), cfg)?;
        // A token alone proves a delivery: with JWT only, an unauthenticated sender costs no body memory.
        let early = match cfg.auth.needs_body() {
            true => None,
            false => Some(deliver::authenticate(live, session.req_header(), b"", ctx).await?),
        };
        let body = deliver::read_body(session, live, &self.shared.bodies, declared).await?;
        let verified = match early {
            Some(verified) => verified,
            None => deliver::authenticate(live, session.req_header(), &body.bytes, ctx).await?,
        };
        let delivery = deliver::read_headers(session.req_header())?;
        let result = self
            .dispatch(session, ctx, live, &delivery, verified, body)
            .await;
        ctx.delivery = Some(delivery);
        result
    }

    /// The steps after the delivery's headers are known (`ctx.delivery` is set after them, for the log).
    async fn dispatch(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Live,
        delivery: &Delivery,
        verified: Option<Verified>,
        body: deliver::Body,
    ) -> Result<deliver::Forwarded, Reply> {
        deliver::filter(&live.config.filters, delivery)?;
        let claim = deliver::claim(&self.shared.dedup, &live.config, delivery, &body.bytes).await?;
        let sent = deliver::Sent {
            delivery,
            verified: verified.as_ref(),
            body: &body.bytes,
        };
        deliver::forward(session, ctx, live, sent, claim).await
    }
}

fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}
