//! A delivery sent to the app, its answer relayed, and what the delivery changes settled on that answer.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::body::Buffered;
use super::relay::{self, Relayed};
use super::reply::Reply;
use super::rewrite::{self, Forwarding};
use super::{Request, client_ip};
use crate::auth::Verified;
use crate::config::SpoolConfig;
use crate::dedup::{AppAnswer, ClaimGuard};
use crate::delivery::Delivery;
use crate::metrics::METRICS;
use crate::outcome::Outcome;
use crate::route::Target;
use crate::spool;

/// What goes to the app.
pub struct Sent<'a> {
    pub target: Target<'a>,
    pub delivery: &'a Delivery,
    /// `None`: shadow mode, and no method verified it.
    pub verified: Option<&'a Verified>,
    pub body: Buffered,
    /// The delivery's dedup claim (verified deliveries, dedup on).
    pub claim: Option<ClaimGuard>,
}

/// What a verified delivery's end changes: its dedup claim and its dead-letter entry. An unverified one
/// (shadow mode) has neither, so it can commit, release, supersede or remove nothing that a verified
/// delivery relies on.
pub struct Stake {
    claim: Option<ClaimGuard>,
    spool: Option<Spooled>,
}

/// A verified delivery's copy for the spool, kept if the app refuses it.
struct Spooled {
    cfg: SpoolConfig,
    pending: spool::Candidate,
    delivery: Delivery,
    body: Bytes,
}

impl Stake {
    /// Nothing to settle (pass-through).
    pub fn none() -> Self {
        Self {
            claim: None,
            spool: None,
        }
    }

    /// Ends the claim on the app's answer (commit only on its whole 2xx), then the dead-letter entry: an
    /// acknowledged event leaves the spool, a refused one is kept (before the sender hears of it).
    pub async fn settle(self, answer: AppAnswer) {
        if let Some(claim) = self.claim {
            claim.settle(answer).await;
        }
        if let Some(s) = self.spool {
            if answer.acknowledged() {
                spool::acknowledged(&s.cfg, &s.delivery.key()).await;
            } else {
                s.pending.keep(answer.status, &s.delivery, &s.body).await;
            }
        }
    }
}

/// The exchange with the app, as the access line and the client span tell it.
#[derive(Debug, Clone, Copy)]
pub struct AppCall {
    pub started: Instant,
    /// To the answer's head, or to the failure.
    pub took: Duration,
    /// The app's status; `None` when it did not answer.
    pub status: Option<u16>,
}

/// Sends the delivery, relays the answer and settles the delivery on it. Also returns how the exchange
/// with the app went.
pub async fn forward(rq: &mut Request<'_>, sent: Sent<'_>) -> (Relayed, AppCall) {
    let cfg = &rq.live.config;
    let head = rewrite::delivery_head(
        rq.req(),
        &Forwarding {
            target: sent.target,
            delivery: sent.delivery,
            verified: sent.verified,
            strip_credentials: (!cfg.auth.forward_credentials)
                .then_some(cfg.auth.hmac.header_key.as_str()),
            client_ip: client_ip(rq.session),
            request_id: &rq.request_id,
            trace: &rq.trace,
            body_len: sent.body.bytes.len(),
        },
    );
    let stake = Stake {
        spool: sent
            .verified
            .zip(cfg.spool.as_ref())
            .map(|(v, cfg)| Spooled {
                cfg: cfg.clone(),
                pending: spool::Candidate::new(cfg, v.label(), &head),
                delivery: sent.delivery.clone(),
                body: sent.body.bytes.clone(),
            }),
        claim: sent.claim,
    };
    let started = Instant::now();
    let answer = rq.live.app.send(head, &sent.body.bytes).await;
    let app_time = started.elapsed();
    let mut call = AppCall {
        started,
        took: app_time,
        status: None,
    };
    drop(sent.body);
    let exchange = match answer {
        Ok(exchange) => exchange,
        Err(failure) => {
            METRICS.observe_upstream(app_time);
            stake
                .settle(AppAnswer {
                    status: failure.status(),
                    whole: false,
                })
                .await;
            return (Relayed::Replied(Reply::app_failed(failure)), call);
        }
    };
    let status = exchange.status();
    call.status = Some(status);
    METRICS.app_response(status, app_time);
    if cfg.upstream.defers(status) {
        // The answer is not relayed; its connection is closed with the exchange.
        log::info!("app answered {status}: deferred as 503 (upstream.app_4xx)");
        stake
            .settle(AppAnswer {
                status,
                whole: true,
            })
            .await;
        let reply = Reply::retry_later(
            Outcome::Deferred,
            "the app refused the delivery; retry later\n",
        );
        return (Relayed::Replied(reply), call);
    }
    (relay::relay(rq, exchange, stake).await, call)
}
