//! The app's answer, relayed to the sender, and the delivery settled on it.
//!
//! Two parties can fail here, and they are told apart: the app may not deliver its whole answer in time
//! (its claim is released, Pitchpoint's retry goes through), and the sender may not take it in time (the
//! event stays acknowledged: the app has it). Each is bounded on its own: the waits on the app by
//! `Deadlines::answer_body`, the waits on the sender by `Deadlines::relay`, both within the claim's life.
//!
//! An answer of up to `RELAY_BUFFER` is read whole first, so the delivery is settled before a byte goes
//! to the sender and the app's connection is back in the pool by the time the sender, having read the
//! answer, sends its next delivery. A larger one is streamed; if the sender stops taking it, the rest is
//! still read from the app (and dropped) to learn whether the answer was whole.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use super::Request;
use super::forward::Stake;
use super::reply::Reply;
use crate::dedup::AppAnswer;
use crate::outcome::Outcome;
use crate::upstream::Exchange;

/// App answers up to this size are read whole before they are relayed.
const RELAY_BUFFER: usize = 64 * 1024;

/// What the sender got: the status it was sent, or a reply of the sidecar's own.
pub enum Relayed {
    Answer(u16),
    Replied(Reply),
}

/// Time left for the waits on one party.
struct Budget(Duration);

impl Budget {
    /// `fut` within what is left; `None` when the budget ran out.
    async fn spend<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        let start = Instant::now();
        let out = tokio::time::timeout(self.0, fut).await.ok();
        self.0 = self.0.saturating_sub(start.elapsed());
        out
    }
}

/// Relays the answer whose head has arrived, and settles `stake` as soon as the answer is known whole or
/// broken.
pub async fn relay(rq: &mut Request<'_>, mut exchange: Exchange, stake: Stake) -> Relayed {
    let mut app = Budget(rq.live.deadlines.answer_body);
    let status = exchange.status();
    let mut resp = exchange.take_header();
    // 204, 304 and a `HEAD` answer carry no body, and their framing headers are the app's.
    let bodiless = matches!(status, 204 | 304) || rq.req().method == http::Method::HEAD;
    let mut held = BytesMut::new();
    let overflow = loop {
        match app.spend(exchange.body_chunk()).await {
            Some(Ok(Some(chunk))) if held.len() + chunk.len() <= RELAY_BUFFER => {
                held.extend_from_slice(&chunk);
            }
            Some(Ok(Some(chunk))) => break chunk,
            Some(Ok(None)) => {
                rq.live.app.finish(exchange);
                stake
                    .settle(AppAnswer {
                        status,
                        whole: true,
                    })
                    .await;
                if !bodiless {
                    let _ = resp.insert_header(http::header::CONTENT_LENGTH, held.len());
                }
                return send_whole(rq.session, resp, held.freeze(), rq.live.deadlines.relay).await;
            }
            broken => {
                log_broken(broken.is_none());
                stake
                    .settle(AppAnswer {
                        status,
                        whole: false,
                    })
                    .await;
                return Relayed::Replied(Reply::new(502, Outcome::UpstreamError, "bad gateway\n"));
            }
        }
    };
    // Streamed: chunked unless the app said how long it is.
    if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    let whole = stream(rq, &mut exchange, resp, [held.freeze(), overflow], app).await;
    stake.settle(AppAnswer { status, whole }).await;
    Relayed::Answer(status)
}

async fn send_whole(
    session: &mut ServerSession,
    resp: ResponseHeader,
    body: Bytes,
    limit: Duration,
) -> Relayed {
    let status = resp.status.as_u16();
    let write = async {
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await
    };
    if !matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))) {
        sender_gone(session);
    }
    Relayed::Answer(status)
}

/// Streams the answer from `first` on; whether the app's answer arrived whole. The sender's writes and
/// the app's reads each spend their own budget.
async fn stream(
    rq: &mut Request<'_>,
    exchange: &mut Exchange,
    resp: ResponseHeader,
    first: [Bytes; 2],
    mut app: Budget,
) -> bool {
    let mut sender = Budget(rq.live.deadlines.relay);
    let session = &mut *rq.session;
    let mut taking = matches!(
        sender
            .spend(session.write_response_header(Box::new(resp)))
            .await,
        Some(Ok(()))
    );
    for piece in first {
        taking = taking && write(session, &mut sender, piece, false).await;
    }
    loop {
        match app.spend(exchange.body_chunk()).await {
            Some(Ok(Some(chunk))) => {
                taking = taking && write(session, &mut sender, chunk, false).await;
            }
            Some(Ok(None)) => {
                taking = taking && write(session, &mut sender, Bytes::new(), true).await;
                if !taking {
                    sender_gone(session);
                }
                return true;
            }
            broken => {
                // Already streaming: the cut connection shows the truncation.
                log_broken(broken.is_none());
                session.set_keepalive(None);
                return false;
            }
        }
    }
}

/// One piece to the sender within what is left of its budget; `false` once it stopped taking them.
async fn write(session: &mut ServerSession, sender: &mut Budget, piece: Bytes, end: bool) -> bool {
    matches!(
        sender.spend(session.write_response_body(piece, end)).await,
        Some(Ok(()))
    )
}

fn sender_gone(session: &mut ServerSession) {
    log::info!("the sender did not take the app's answer in time; the event stays acknowledged");
    session.set_keepalive(None);
}

fn log_broken(timed_out: bool) {
    if timed_out {
        log::warn!("app answer body not whole in time");
    } else {
        log::warn!("app answer body broken");
    }
}
