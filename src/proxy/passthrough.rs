//! `other_paths = "forward"`: a request to a path that is not a webhook path goes to the app unverified,
//! streamed both ways, on a connection of its own (`upstream::outgoing`). It is told `X-Pps-Verified:
//! none`, loses every trust header, and changes nothing a delivery relies on (no claim, no spool).
//!
//! Pass-through is the app's own traffic, not a delivery: its body is streamed, never buffered. The whole
//! body must arrive within `body_timeout`, as a delivery's must (`408` otherwise: a body trickled a byte
//! at a time would hold a connection to the app, and an app worker, for as long as the sender liked);
//! each wait on the app is bounded by `read_timeout`.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::body::continue_if_expected;
use super::ended::Ended;
use super::forward::{AppCall, Stake};
use super::relay::{self, Relayed};
use super::reply::Reply;
use super::rewrite::{self, BodyFraming};
use super::{Request, client_ip};
use crate::route::Target;
use crate::upstream::{AppFailure, Outgoing, Progress};

/// Forwards the request as routed, and relays the app's answer.
pub async fn forward(rq: &mut Request<'_>, target: Target<'_>) -> Ended {
    let mut ended = Ended::claimed(None);
    let framing = framing(rq);
    let head = rewrite::passthrough_head(
        rq.req(),
        target,
        framing,
        client_ip(rq.session),
        &rq.request_id,
        &rq.trace,
    );
    let started = Instant::now();
    ended.app_started = Some(started);
    let head_only = rq.req().method == http::Method::HEAD;
    let mut out = match rq.live.app.open(&head, head_only).await {
        Ok(out) => out,
        Err(f) => return rq.stop(ended, Reply::app_failed(f)).await,
    };
    if framing != BodyFraming::None {
        if let Err(reply) = continue_if_expected(rq.session).await {
            return rq.stop(ended, reply).await;
        }
        match send_body(rq, &mut out, framing).await {
            Ok(()) => {}
            Err(Cut::App(f)) => return rq.stop(ended, Reply::app_failed(f)).await,
            // The sender's body broke or was too slow: the app has a cut request, the sender a closed
            // connection.
            Err(Cut::Sender) => return rq.stop(ended, Reply::bad_request("bad request\n")).await,
            Err(Cut::TooSlow) => return rq.stop(ended, super::body::too_slow()).await,
        }
    }
    let exchange = match out.answer().await {
        Ok(exchange) => exchange,
        Err(f) => return rq.stop(ended, Reply::app_failed(f)).await,
    };
    ended.asked(AppCall {
        started,
        took: started.elapsed(),
        status: Some(exchange.status()),
    });
    match relay::relay(rq, exchange, Stake::none()).await {
        Relayed::Answer(status) => ended.relayed(status),
        Relayed::Replied(reply) => rq.stop(ended, reply).await,
    }
}

/// How the body goes on: as it came (a length, or chunks), Pingora having decoded the sender's framing.
fn framing(rq: &mut Request<'_>) -> BodyFraming {
    if rq.session.is_body_empty() {
        return BodyFraming::None;
    }
    let req = rq.req();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return BodyFraming::Chunked;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map_or(BodyFraming::None, BodyFraming::Length)
}

/// Why a pass-through body did not reach the app whole.
enum Cut {
    /// The sender's body broke (bad framing, a closed connection).
    Sender,
    /// It did not arrive whole within `body_timeout`.
    TooSlow,
    App(AppFailure),
}

/// Streams the sender's body to the app until its end or until the app answers, within one deadline.
async fn send_body(
    rq: &mut Request<'_>,
    out: &mut Outgoing,
    framing: BodyFraming,
) -> Result<(), Cut> {
    let deadline = tokio::time::Instant::now() + rq.live.config.server.body_timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, rq.session.read_request_body()).await;
        let piece = match read {
            Ok(Ok(piece)) => piece,
            Ok(Err(_)) => return Err(Cut::Sender),
            Err(_) => return Err(Cut::TooSlow),
        };
        let (wire, last) = match (framing, piece) {
            (BodyFraming::Chunked, Some(data)) if data.is_empty() => continue,
            (BodyFraming::Chunked, Some(data)) => (chunk(&data), false),
            (BodyFraming::Chunked, None) => (Bytes::from_static(b"0\r\n\r\n"), true),
            (_, Some(data)) => (data, false),
            (_, None) => return Ok(()),
        };
        match out.body(&wire).await.map_err(Cut::App)? {
            Progress::Answered => return Ok(()),
            Progress::Taken if last => return Ok(()),
            Progress::Taken => {}
        }
    }
}

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 20);
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
    out.freeze()
}
