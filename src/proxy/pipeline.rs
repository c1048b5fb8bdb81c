//! One delivery, top to bottom: admit, body, authenticate, identify, filter, claim, forward, relay and
//! settle. Each step is a function that returns what the next one needs or the `Reply` that ends the
//! delivery; [`deliver`] runs them in the order of the contract (SPEC "Handling one request") and is the
//! only place that records how the delivery ended.

use pingora::http::RequestHeader;

use super::Request;
use super::body::{self, Buffered};
use super::ended::Ended;
use super::forward::{self, Sent};
use super::relay::Relayed;
use super::reply::Reply;
use crate::auth::{self, Failure, Verified};
use crate::config::{Config, FiltersConfig};
use crate::dedup::{BodyDigest, Claim, ClaimGuard};
use crate::delivery::{self, Delivery};
use crate::headers;
use crate::outcome::Outcome;
use crate::route::Target;

/// Runs a step; a `Reply` is sent and ends the delivery as it stands.
macro_rules! step {
    ($rq:expr, $ended:expr, $step:expr) => {
        match $step {
            Ok(value) => value,
            Err(reply) => return $rq.stop($ended, reply).await,
        }
    };
}

/// One delivery on a webhook path, `target` as routed.
pub async fn deliver(rq: &mut Request<'_>, target: Target<'_>) -> Ended {
    let cfg = &rq.live.config;
    // Read first, trusted later: a refused delivery's access line still says whose event it claims to be.
    let claimed = delivery::read(rq.req());
    let mut ended = Ended::claimed(claimed.as_ref().ok().cloned());

    let declared = step!(rq, ended, admit(rq.req(), cfg));
    // A token alone proves a delivery: with JWT only, an unauthenticated sender costs no body memory.
    let early = match cfg.auth.needs_body() {
        true => None,
        false => Some(step!(rq, ended, authenticate(rq, b"").await)),
    };
    let body = step!(rq, ended, body::read(rq, declared).await);
    let (verified, failure) = match early {
        Some(checked) => checked,
        None => step!(rq, ended, authenticate(rq, &body.bytes).await),
    };
    ended.verified = verified.clone();
    ended.failure = failure;
    let delivery = step!(rq, ended, claimed.map_err(bad_headers));
    step!(rq, ended, filter(&cfg.filters, &delivery));
    let claim = step!(
        rq,
        ended,
        claim(rq, &delivery, &body, verified.as_ref()).await
    );

    let sent = Sent {
        target,
        delivery: &delivery,
        verified: verified.as_ref(),
        body,
        claim,
    };
    let (relayed, call) = forward::forward(rq, sent).await;
    ended.asked(call);
    match relayed {
        Relayed::Answer(status) => ended.relayed(status),
        Relayed::Replied(reply) => rq.stop(ended, reply).await,
    }
}

/// 405 for anything but POST; 413 when the declared length is over the limit. The declared length.
fn admit(req: &RequestHeader, cfg: &Config) -> Result<Option<u64>, Reply> {
    if req.method != http::Method::POST {
        return Err(
            Reply::new(405, Outcome::MethodNotAllowed, "method not allowed\n")
                .header("Allow", "POST"),
        );
    }
    // Pingora has checked the value (digits, one length); a chunked body has none.
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.webhooks.max_body_bytes as u64) {
        return Err(body::too_large());
    }
    Ok(declared)
}

/// `(Some(method), _)` when a method verified the delivery; `(None, failure)` when none did in shadow
/// mode. A failure that proves a forgery is a 403; one where the sidecar cannot decide (no keys, no valid
/// secret) is a 503 so that Pitchpoint retries. See `auth::Failure::is_proof`.
async fn authenticate(
    rq: &Request<'_>,
    body: &[u8],
) -> Result<(Option<Verified>, Option<Failure>), Reply> {
    let auth = &rq.live.config.auth;
    match auth::authenticate(auth, rq.live.jwt.as_deref(), rq.req(), body).await {
        Ok(v) => Ok((Some(v), None)),
        Err(failure) => {
            auth::series::failure(failure);
            if !auth.enforce {
                Ok((None, Some(failure)))
            } else if failure.is_proof() {
                Err(Reply::new(403, Outcome::Unauthorized, "forbidden\n").failure(failure))
            } else {
                Err(
                    Reply::retry_later(Outcome::Unavailable, "cannot verify now, retry later\n")
                        .failure(failure),
                )
            }
        }
    }
}

/// 400 for `X-Pps-*` headers missing or ambiguous.
fn bad_headers(reason: delivery::HeaderError) -> Reply {
    log::info!("bad request: {reason}");
    Reply::new(400, Outcome::BadRequest, "bad request\n")
}

/// 403 for a tenant, topic or sub-topic outside a configured allow-list.
fn filter(filters: &FiltersConfig, d: &Delivery) -> Result<(), Reply> {
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

/// Claims the delivery's key: `None` when dedup is off or the delivery is unverified (shadow mode: it
/// may only read the cache); the remembered answer for a duplicate; 503 while another copy is in flight.
async fn claim(
    rq: &Request<'_>,
    d: &Delivery,
    body: &Buffered,
    verified: Option<&Verified>,
) -> Result<Option<ClaimGuard>, Reply> {
    let cfg = &rq.live.config;
    if !cfg.dedup.enabled {
        return Ok(None);
    }
    let dedup = &rq.shared.dedup;
    let Some(verified) = verified else {
        return match dedup.lookup(&d.key()).await {
            Some(status) => Err(duplicate(status)),
            None => Ok(None),
        };
    };
    // The replay guard is for what an HMAC cannot prove (when a body was signed); a token's `exp` bounds
    // its own replays.
    let guard_body = cfg.auth.hmac.replay_guard && matches!(verified, Verified::Hmac { .. });
    let digest = BodyDigest::of(&body.bytes);
    match dedup.claim(d.key(), digest, guard_body).await {
        Claim::Acquired(guard) => Ok(Some(guard)),
        Claim::Duplicate { status, .. } => Err(duplicate(status)),
        Claim::Busy => Err(Reply::retry_later(
            Outcome::Duplicate,
            "same delivery in progress\n",
        )),
        Claim::ReplayedBody => {
            auth::series::failure(Failure::ReplayedBody);
            Err(Reply::new(403, Outcome::Unauthorized, "forbidden\n")
                .failure(Failure::ReplayedBody))
        }
        Claim::Unavailable => Err(Reply::retry_later(
            Outcome::Unavailable,
            "cannot check for duplicates now, retry later\n",
        )),
    }
}

fn duplicate(status: u16) -> Reply {
    Reply::new(status, Outcome::Duplicate, "duplicate\n").header(headers::DUPLICATE, "true")
}
