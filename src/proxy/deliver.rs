//! The steps of one delivery, in the order of the contract (SPEC "Handling one request"). Each returns the
//! value the next step needs, or the `Reply` that ends the delivery.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::reply::Reply;
use super::{Ctx, client_ip};
use crate::auth::{self, Verified};
use crate::config::{Config, FiltersConfig};
use crate::dedup::{AppAnswer, BodyDigest, Claim, ClaimGuard, Dedup, Key};
use crate::headers::{self, Delivery, Forwarding};
use crate::limits::{BodyBudget, Reservation};
use crate::metrics::METRICS;
use crate::outcome::Outcome;
use crate::spool;
use crate::state::Live;
use crate::upstream::{AppFailure, Exchange};

/// 405 for anything but POST; 413 when the declared length is over the limit. The declared length.
pub fn admit(req: &RequestHeader, cfg: &Config) -> Result<Option<u64>, Reply> {
    if req.method != http::Method::POST {
        return Err(
            Reply::new(405, Outcome::MethodNotAllowed, "method not allowed\n")
                .header("Allow", "POST"),
        );
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.webhooks.max_body_bytes as u64) {
        return Err(too_large());
    }
    Ok(declared)
}

fn too_large() -> Reply {
    Reply::new(413, Outcome::TooLarge, "payload too large\n").close()
}

/// A delivery body, and its share of the memory budget for bodies, held as long as the body is.
pub struct Body {
    pub bytes: Bytes,
    _held: Reservation,
}

/// The whole body, within `max_body_bytes` (413), the memory budget for all bodies (503) and
/// `body_timeout` (408). Answers `100 Continue` first when the sender waits for it.
pub async fn read_body(
    session: &mut Session,
    live: &Live,
    budget: &Arc<BodyBudget>,
    declared: Option<u64>,
) -> Result<Body, Reply> {
    let server = &live.config.server;
    let max = live.config.webhooks.max_body_bytes;
    let mut held = budget.reservation();
    // Reserved from the declared length before a byte is read; a chunked body's share grows as it comes.
    if let Some(n) = declared
        && !held.grow_to(n as usize, server.max_buffered_bytes)
    {
        return Err(overloaded());
    }
    continue_if_expected(session).await?;
    let limit = declared.map_or(max, |n| (n as usize).min(max));
    let reading = read_within(
        session,
        (limit, declared.is_some()),
        &mut held,
        server.max_buffered_bytes,
    );
    match tokio::time::timeout(server.body_timeout, reading).await {
        Ok(bytes) => Ok(Body {
            bytes: bytes?,
            _held: held,
        }),
        Err(_) => Err(Reply::new(408, Outcome::Timeout, "request timeout\n").close()),
    }
}

/// Reads the body, at most `limit` bytes (the declared length when `declared`, else `max_body_bytes`).
async fn read_within(
    session: &mut Session,
    (limit, declared): (usize, bool),
    held: &mut Reservation,
    budget: usize,
) -> Result<Bytes, Reply> {
    // Nothing is allocated before the first bytes come, and the buffer never holds more than was
    // reserved for it. Growing a declared body by doubling left its outgrown buffers with the allocator:
    // 32 stalled 1 MiB uploads cost 35 MiB above the 32 they held.
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = session.read_request_body().await.map_err(|e| {
        log::debug!("request body failed: {}", e.etype().as_str());
        broken_body()
    })? {
        let len = buf.len() + chunk.len();
        if len > limit {
            return Err(too_large());
        }
        if len > buf.capacity() {
            // The whole declared length at the first bytes (only touched pages count), doubling for a
            // chunked body, never past `limit`; the budget holds the capacity, not just the bytes in it.
            let target = if declared {
                limit
            } else {
                len.max(buf.capacity() * 2).min(limit)
            };
            if !held.grow_to(target, budget) {
                return Err(overloaded());
            }
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// `503` + `Retry-After`, connection closed: the body is left unread.
fn overloaded() -> Reply {
    Reply::retry_later(Outcome::Overloaded, "busy, retry later\n").close()
}

/// Sends `100 Continue` when the sender waits for it. Pingora counts it as an answer given before the
/// request was read, which would end keep-alive; it is not one.
async fn continue_if_expected(session: &mut Session) -> Result<(), Reply> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|_| broken_body())?;
    }
    Ok(())
}

/// The body could not be read whole: the sender sees the connection closed, or this.
fn broken_body() -> Reply {
    Reply::new(400, Outcome::BadRequest, "bad request\n").close()
}

/// `Some` when a method verified the delivery, `None` when none did in shadow mode. A failure that
/// proves a forgery is a 403; one where the sidecar cannot decide (no keys) is a 503 so that Pitchpoint
/// retries.
pub async fn authenticate(
    live: &Live,
    req: &RequestHeader,
    body: &[u8],
    ctx: &mut Ctx,
) -> Result<Option<Verified>, Reply> {
    let auth = &live.config.auth;
    match auth::authenticate(auth, live.jwt.as_deref(), req, body).await {
        Ok(v) => Ok(Some(v)),
        Err(failure) => {
            ctx.auth_failure = Some(failure.reason());
            METRICS.auth_failure(failure);
            if !auth.enforce {
                Ok(None)
            } else if failure.is_proof() {
                Err(Reply::new(403, Outcome::Unauthorized, "forbidden\n"))
            } else {
                Err(Reply::retry_later(
                    Outcome::Unavailable,
                    "cannot verify now, retry later\n",
                ))
            }
        }
    }
}

/// The `X-Pps-*` headers, checked: 400 when required ones are missing or ambiguous.
pub fn read_headers(req: &RequestHeader) -> Result<Delivery, Reply> {
    headers::read_delivery(req).map_err(|reason| {
        log::info!("bad request: {reason}");
        Reply::new(400, Outcome::BadRequest, "bad request\n")
    })
}

/// 403 for a tenant, topic or sub-topic outside a configured allow-list.
pub fn filter(filters: &FiltersConfig, d: &Delivery) -> Result<(), Reply> {
    let allowed = allowed(&filters.tenants, d.tenant.as_deref())
        && allowed(&filters.topics, Some(&d.topic))
        && allowed(&filters.sub_topics, d.sub_topic.as_deref());
    if allowed {
        Ok(())
    } else {
        Err(Reply::new(403, Outcome::Filtered, "forbidden\n"))
    }
}

fn allowed(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|a| a == v))
}

/// Claims the delivery's key: `None` when dedup is off; the remembered answer for a duplicate; 503 while
/// another copy is in flight.
pub async fn claim(
    dedup: &Dedup,
    cfg: &Config,
    d: &Delivery,
    body: &[u8],
) -> Result<Option<ClaimGuard>, Reply> {
    if !cfg.dedup.enabled {
        return Ok(None);
    }
    let key = Key::new(d.tenant.as_deref(), &d.webhook_id);
    match dedup.claim(key, BodyDigest::of(body), false).await {
        Claim::Acquired(guard) => Ok(Some(guard)),
        Claim::Duplicate { status, .. } => {
            Err(Reply::new(status, Outcome::Duplicate, "duplicate\n")
                .header(headers::DUPLICATE, "true"))
        }
        Claim::Busy | Claim::ReplayedBody => Err(Reply::retry_later(
            Outcome::Duplicate,
            "same delivery in progress\n",
        )),
        Claim::Unavailable => Err(Reply::retry_later(
            Outcome::Duplicate,
            "the dedup store cannot decide now\n",
        )),
    }
}

/// What goes to the app.
pub struct Sent<'a> {
    pub delivery: &'a Delivery,
    /// `None`: shadow mode, and no method verified it.
    pub verified: Option<&'a Verified>,
    pub body: &'a Bytes,
}

/// The app's answer, its head arrived, and the claim to settle once its body has come whole.
pub struct Forwarded {
    pub exchange: Exchange,
    pub claim: Option<Settle>,
}

/// A claim waiting for the end of the app's answer.
pub struct Settle {
    guard: ClaimGuard,
    /// Whether an acknowledgement marks the event done (not for an unverified delivery).
    commit: bool,
}

impl Settle {
    /// The app answered `status`, and its answer came `whole` (a body cut short or malformed is no
    /// acknowledgement: the claim is released and Pitchpoint's retry goes through).
    pub async fn after(settle: Option<Settle>, status: u16, whole: bool) {
        if let Some(Settle { guard, commit }) = settle {
            let whole = commit && whole;
            guard.settle(AppAnswer { status, whole }).await;
        }
    }
}

/// Sends the delivery to the app and waits for its answer's head. The claim is settled when the app's
/// answer is whole (`Settle`), or at once when the app could not answer. A verified one the app refused is
/// spooled (`spool.dir`) before the answer goes back.
pub async fn forward(
    session: &Session,
    ctx: &mut Ctx,
    live: &Live,
    sent: Sent<'_>,
    claim: Option<ClaimGuard>,
) -> Result<Forwarded, Reply> {
    let Sent {
        delivery,
        verified,
        body,
    } = sent;
    let cfg = &live.config;
    let head = headers::upstream_head(
        session.req_header(),
        &Forwarding {
            delivery,
            verified,
            strip_credentials: (!cfg.auth.forward_credentials).then_some(&cfg.auth.hmac.header_key),
            client_ip: client_ip(session),
            request_id: &ctx.request_id,
            body_len: body.len(),
        },
    );
    let spooled = spool::Pending::new(cfg.spool.as_ref(), verified, &head);
    let sent_at = Instant::now();
    let result = live.app.send(head, body).await;
    let elapsed = sent_at.elapsed();
    ctx.app_time = Some(elapsed);
    if let Some(pending) = spooled {
        let status = result
            .as_ref()
            .map_or_else(|f| f.status(), Exchange::status);
        pending.keep(status, delivery, body).await;
    }
    match result {
        Ok(exchange) => {
            let status = exchange.status();
            METRICS.app_response(status, elapsed);
            // An unverified delivery (shadow mode) is never remembered as done.
            let claim = claim.map(|guard| Settle {
                guard,
                commit: verified.is_some(),
            });
            if cfg.upstream.defers(status) {
                // The answer is not relayed; its connection is closed with the exchange.
                log::info!("app answered {status}: deferred as 503 (upstream.app_4xx = \"retry\")");
                Settle::after(claim, status, true).await;
                return Err(Reply::retry_later(
                    Outcome::Deferred,
                    "the app refused the delivery; retry later\n",
                ));
            }
            Ok(Forwarded { exchange, claim })
        }
        Err(failure) => {
            METRICS.observe_upstream(elapsed);
            if let Some(guard) = claim {
                let status = failure.status();
                guard
                    .settle(AppAnswer {
                        status,
                        whole: true,
                    })
                    .await;
            }
            let body = match failure {
                AppFailure::Unreachable => "bad gateway\n",
                AppFailure::Timeout => "gateway timeout\n",
            };
            Err(Reply::new(failure.status(), Outcome::UpstreamError, body))
        }
    }
}
