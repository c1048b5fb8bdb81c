//! The delivery path: every request on the webhook port goes through `Sidecar::request_filter`.
//!
//! In order (SPEC "Handling one request"): 405, 413, authentication (403), header rules (400), filters
//! (403), deduplication, forward to the app and relay its answer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::auth::{self, jwt::JwtVerifier};
use crate::config::{AccessLog, Config, Method, OtherPaths};
use crate::dedup::{Claim, Dedup};
use crate::headers::{self, Delivery, Forwarding};
use crate::metrics::{InFlight, METRICS};
use crate::upstream::{App, AppFailure};

/// App answers up to this size are read whole before they are relayed.
const RELAY_BUFFER: usize = 64 * 1024;

/// How a request ended, for the access log and `pps_sidecar_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Duplicate,
    Unauthorized,
    BadRequest,
    TooLarge,
    MethodNotAllowed,
    Filtered,
    NotFound,
    UpstreamError,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Forwarded,
        Outcome::Duplicate,
        Outcome::Unauthorized,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::MethodNotAllowed,
        Outcome::Filtered,
        Outcome::NotFound,
        Outcome::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Duplicate => "duplicate",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::Filtered => "filtered",
            Outcome::NotFound => "not_found",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// The configuration in force and what was built from it. Replaced whole on reload.
pub struct Live {
    pub config: Config,
    pub app: Arc<App>,
    /// Present when "jwt" is in `auth.methods`.
    pub jwt: Option<Arc<JwtVerifier>>,
}

/// State shared by the proxy, admin and lifecycle services.
pub struct Shared {
    live: RwLock<Arc<Live>>,
    pub dedup: Dedup,
    /// The start-up config's `UpstreamConfig::exchange_bound`, which sized the dedup claims.
    exchange_cap: Duration,
}

impl Shared {
    pub fn new(config: Config, dedup: Dedup) -> Self {
        let exchange_cap = config.upstream.exchange_bound();
        let app = Arc::new(App::new(&config.upstream, exchange_cap));
        let jwt = jwt_verifier(&config, None);
        Self {
            live: RwLock::new(Arc::new(Live { config, app, jwt })),
            dedup,
            exchange_cap,
        }
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `config` in force for the requests that start from now on. The pool of connections to the
    /// app, and the JWKS already fetched, are kept when their settings did not change.
    pub fn replace(&self, config: Config) {
        let old = self.live();
        let app = if old.config.upstream == config.upstream {
            old.app.clone()
        } else {
            Arc::new(App::new(&config.upstream, self.exchange_cap))
        };
        let jwt = jwt_verifier(&config, old.jwt.as_ref());
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Live { config, app, jwt });
    }
}

fn jwt_verifier(config: &Config, old: Option<&Arc<JwtVerifier>>) -> Option<Arc<JwtVerifier>> {
    if !config.auth.methods.contains(&Method::Jwt) {
        return None;
    }
    match old {
        Some(v) if v.serves(&config.auth.jwt) => Some(v.clone()),
        _ => Some(Arc::new(JwtVerifier::new(&config.auth.jwt))),
    }
}

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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = self.shared.live();
        ctx.live = Some(live.clone());
        ctx.request_id = headers::request_id(session.req_header());
        let webhooks = &live.config.webhooks;
        if !webhooks.is_webhook_path(session.req_header().uri.path()) {
            return match webhooks.other_paths {
                OtherPaths::Reject => {
                    reply(
                        session,
                        ctx,
                        Reply::new(404, Outcome::NotFound, "not found\n"),
                    )
                    .await?;
                    Ok(true)
                }
                OtherPaths::Forward => {
                    ctx.outcome = Some(Outcome::Forwarded);
                    Ok(false)
                }
            };
        }
        self.deliver(session, ctx, &live).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone().unwrap_or_else(|| self.shared.live());
        Ok(Box::new(live.app.peer().clone()))
    }

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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.status == 0 {
            ctx.status = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
        }
        if ctx.outcome == Some(Outcome::Forwarded) && (ctx.status >= 500 || e.is_some()) {
            ctx.outcome = Some(Outcome::UpstreamError);
        }
        if let Some(outcome) = ctx.outcome {
            METRICS.request(outcome);
        }
        access_log(session, ctx);
    }
}

/// A response the sidecar writes itself.
struct Reply {
    status: u16,
    outcome: Outcome,
    body: &'static str,
    extra: Vec<(&'static str, String)>,
    close: bool,
}

impl Reply {
    fn new(status: u16, outcome: Outcome, body: &'static str) -> Self {
        Self {
            status,
            outcome,
            body,
            extra: Vec::new(),
            close: false,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// Close the connection after answering: the request body was left unread.
    fn close(mut self) -> Self {
        self.close = true;
        self
    }
}

/// Writes the response directly, keeping the connection alive when it can (`respond_error` would not).
async fn reply(session: &mut Session, ctx: &mut Ctx, r: Reply) -> Result<()> {
    ctx.status = r.status;
    ctx.outcome = Some(r.outcome);
    let mut resp = ResponseHeader::build(r.status, Some(4 + r.extra.len()))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", r.body.len().to_string())?;
    for (name, value) in r.extra {
        resp.insert_header(name, value)?;
    }
    if r.close {
        resp.insert_header("Connection", "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(r.body.as_bytes())), true)
        .await
}

enum BodyError {
    TooLarge,
    Io(Box<Error>),
}

/// Reads the whole request body, refusing to hold more than `max` bytes.
async fn read_body(session: &mut Session, max: usize, hint: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::with_capacity(hint.min(max));
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Io)? {
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

impl Sidecar {
    async fn deliver(&self, session: &mut Session, ctx: &mut Ctx, live: &Live) -> Result<()> {
        let cfg = &live.config;
        let req = session.req_header();

        if req.method != http::Method::POST {
            let r = Reply::new(405, Outcome::MethodNotAllowed, "method not allowed\n")
                .header("Allow", "POST");
            return reply(session, ctx, r).await;
        }

        let max = cfg.webhooks.max_body_bytes;
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            let r = Reply::new(413, Outcome::TooLarge, "payload too large\n").close();
            return reply(session, ctx, r).await;
        }
        let expects_continue = req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.write_continue_response().await?;
        }

        let body = match read_body(session, max, declared.unwrap_or(0) as usize).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                let r = Reply::new(413, Outcome::TooLarge, "payload too large\n").close();
                return reply(session, ctx, r).await;
            }
            Err(BodyError::Io(e)) => return Err(e),
        };

        let verified =
            match auth::authenticate(&cfg.auth, live.jwt.as_deref(), session.req_header(), &body)
                .await
            {
                Ok(v) => Some(v),
                Err(failure) => {
                    ctx.auth_failure = Some(failure.reason());
                    METRICS.auth_failure(failure);
                    if cfg.auth.enforce {
                        let r = Reply::new(403, Outcome::Unauthorized, "forbidden\n");
                        return reply(session, ctx, r).await;
                    }
                    None
                }
            };

        let delivery = match headers::read_delivery(session.req_header()) {
            Ok(d) => d,
            Err(reason) => {
                log::info!("bad request: {reason}");
                let r = Reply::new(400, Outcome::BadRequest, "bad request\n");
                return reply(session, ctx, r).await;
            }
        };
        let allowed = allowed(&cfg.filters.tenants, delivery.tenant.as_deref())
            && allowed(&cfg.filters.topics, Some(&delivery.topic))
            && allowed(&cfg.filters.sub_topics, delivery.sub_topic.as_deref());
        ctx.delivery = Some(delivery);
        if !allowed {
            let r = Reply::new(403, Outcome::Filtered, "forbidden\n");
            return reply(session, ctx, r).await;
        }
        let delivery = ctx.delivery.as_ref().expect("set above");

        let claim = if cfg.dedup.enabled {
            match self.shared.dedup.claim(delivery.dedup_key()).await {
                Claim::Acquired(guard) => Some(guard),
                Claim::Duplicate(status) => {
                    let r = Reply::new(status, Outcome::Duplicate, "duplicate\n")
                        .header(headers::DUPLICATE, "true");
                    return reply(session, ctx, r).await;
                }
                Claim::Busy => {
                    let r = Reply::new(503, Outcome::Duplicate, "same delivery in progress\n")
                        .header("Retry-After", "5");
                    return reply(session, ctx, r).await;
                }
            }
        } else {
            None
        };

        let head = headers::upstream_head(
            session.req_header(),
            &Forwarding {
                delivery,
                verified: verified.as_ref(),
                strip_credentials: (!cfg.auth.forward_credentials)
                    .then_some(&cfg.auth.hmac.header_key),
                client_ip: client_ip(session),
                request_id: &ctx.request_id,
                body_len: body.len(),
            },
        );
        let sent_at = Instant::now();
        let result = live.app.send(head, &body).await;
        let elapsed = sent_at.elapsed();
        ctx.app_time = Some(elapsed);
        let mut exchange = match result {
            Ok(exchange) => exchange,
            Err(failure) => {
                METRICS.observe_upstream(elapsed);
                if let Some(guard) = claim {
                    guard.settle(failure.status()).await;
                }
                let body = match failure {
                    AppFailure::Unreachable => "bad gateway\n",
                    AppFailure::Timeout => "gateway timeout\n",
                };
                let r = Reply::new(failure.status(), Outcome::UpstreamError, body);
                return reply(session, ctx, r).await;
            }
        };

        ctx.status = exchange.status();
        METRICS.app_response(ctx.status, elapsed);
        // An app 5xx makes Pitchpoint retry, as a 502 or 504 would: both count as upstream errors.
        ctx.outcome = Some(if ctx.status >= 500 {
            Outcome::UpstreamError
        } else {
            Outcome::Forwarded
        });
        if let Some(guard) = claim {
            guard.settle(ctx.status).await;
        }
        let mut resp = exchange.take_header();
        // 204 and 304 carry no body, and their framing headers are not the sidecar's to change.
        let bodiless = ctx.status == 204 || ctx.status == 304;

        // The app's answer is held until it is complete, so that its connection is back in the pool by the
        // time the sender, having read the answer, sends its next delivery. An answer larger than
        // RELAY_BUFFER is streamed from the point it outgrows the buffer.
        let mut held = Some(BytesMut::new());
        loop {
            let chunk = match exchange.body_chunk().await {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Nothing relayed yet: the sender gets a 5xx and retries (a committed 2xx answers the
                    // retry as a duplicate). Already streaming: the cut connection shows the truncation.
                    log::warn!("app response body failed: {}", e.etype().as_str());
                    return Err(e);
                }
            };
            match (chunk, held.take()) {
                (Some(chunk), Some(mut buf)) if buf.len() + chunk.len() <= RELAY_BUFFER => {
                    buf.extend_from_slice(&chunk);
                    held = Some(buf);
                }
                (Some(chunk), Some(buf)) => {
                    if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
                        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                    }
                    session
                        .write_response_header(Box::new(resp.clone()), false)
                        .await?;
                    session
                        .write_response_body(Some(buf.freeze()), false)
                        .await?;
                    session.write_response_body(Some(chunk), false).await?;
                }
                (Some(chunk), None) => session.write_response_body(Some(chunk), false).await?,
                (None, Some(buf)) => {
                    live.app.finish(exchange);
                    if !bodiless {
                        resp.insert_header(http::header::CONTENT_LENGTH, buf.len().to_string())?;
                    }
                    session.write_response_header(Box::new(resp), false).await?;
                    return session.write_response_body(Some(buf.freeze()), true).await;
                }
                (None, None) => {
                    session.write_response_body(None, true).await?;
                    live.app.finish(exchange);
                    return Ok(());
                }
            }
        }
    }
}

fn allowed(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|a| a == v))
}

fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

/// One line per request. Ids and names only: never a secret, token, signature or body.
fn access_log(session: &Session, ctx: &Ctx) {
    let req = session.req_header();
    let d = ctx.delivery.as_ref();
    let format = ctx
        .live
        .as_ref()
        .map_or(AccessLog::Text, |l| l.config.server.access_log);
    let app_ms = ctx.app_time.map(|t| t.as_secs_f64() * 1000.0);
    let total_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
    let outcome = ctx.outcome.map_or("-", Outcome::as_str);
    let tenant = d.and_then(|d| d.tenant.as_deref());
    let topic = d.map(|d| d.topic.as_str());
    let webhook_id = d.map(|d| d.webhook_id.as_str());
    match format {
        AccessLog::Json => {
            let line = serde_json::json!({
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "status": ctx.status,
                "outcome": outcome,
                "tenant": tenant,
                "topic": topic,
                "webhook_id": webhook_id,
                "app_ms": app_ms.map(|v| (v * 10.0).round() / 10.0),
                "total_ms": (total_ms * 10.0).round() / 10.0,
                "auth_failure": ctx.auth_failure,
                "request_id": ctx.request_id,
            });
            log::info!(target: "access", "{line}");
        }
        AccessLog::Text => {
            let line = text_line(&[
                ("method", Field::Str(Some(req.method.as_str()))),
                ("path", Field::Str(Some(req.uri.path()))),
                ("status", Field::Num(ctx.status.into())),
                ("outcome", Field::Str(Some(outcome))),
                ("tenant", Field::Str(tenant)),
                ("topic", Field::Str(topic)),
                ("webhook_id", Field::Str(webhook_id)),
                ("app_ms", Field::Millis(ctx.app_time)),
                ("total_ms", Field::Millis(Some(ctx.started.elapsed()))),
                ("auth_failure", Field::Str(ctx.auth_failure)),
                ("request_id", Field::Str(Some(&ctx.request_id))),
            ]);
            log::info!(target: "access", "{line}");
        }
    }
}

enum Field<'a> {
    /// `-` when absent or empty.
    Str(Option<&'a str>),
    Num(u64),
    /// Milliseconds with one decimal; `-` when absent.
    Millis(Option<Duration>),
}

/// `key=value` pairs separated by spaces. Built by hand: this runs for every request, and going through
/// `format!` for each field cost about a tenth of the sidecar's own instructions per delivery.
fn text_line(fields: &[(&str, Field<'_>)]) -> String {
    let mut line = String::with_capacity(320);
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
        match value {
            Field::Str(v) => line.push_str(v.filter(|v| !v.is_empty()).unwrap_or("-")),
            Field::Num(n) => push_num(&mut line, *n),
            Field::Millis(None) => line.push('-'),
            Field::Millis(Some(d)) => {
                let tenths = (d.as_micros() + 50) / 100;
                push_num(&mut line, u64::try_from(tenths / 10).unwrap_or(u64::MAX));
                line.push('.');
                line.push(char::from(b'0' + (tenths % 10) as u8));
            }
        }
    }
    line
}

fn push_num(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_access_line_has_every_field_with_dashes_for_the_missing() {
        let line = text_line(&[
            ("method", Field::Str(Some("POST"))),
            ("status", Field::Num(200)),
            ("zero", Field::Num(0)),
            ("tenant", Field::Str(None)),
            ("topic", Field::Str(Some(""))),
            ("app_ms", Field::Millis(Some(Duration::from_micros(1_249)))),
            (
                "slow_ms",
                Field::Millis(Some(Duration::from_micros(12_345_678))),
            ),
            ("fast_ms", Field::Millis(Some(Duration::from_micros(40)))),
            ("none_ms", Field::Millis(None)),
        ]);
        assert_eq!(
            line,
            "method=POST status=200 zero=0 tenant=- topic=- app_ms=1.2 slow_ms=12345.7 fast_ms=0.0 none_ms=-"
        );
    }
}
