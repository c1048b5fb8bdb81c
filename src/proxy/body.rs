//! A delivery's body, read whole before anything goes to the app, within `max_body_bytes` (413), the
//! memory budget for all bodies (503) and `body_timeout` (408).

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use super::Request;
use super::reply::Reply;
use crate::limits::Reservation;
use crate::outcome::Outcome;

/// A delivery body, and its share of the memory budget for bodies, held as long as the body is.
pub struct Buffered {
    pub bytes: Bytes,
    _held: Reservation,
}

pub fn too_large() -> Reply {
    Reply::new(413, Outcome::TooLarge, "payload too large\n").close()
}

/// Reads the whole body. `declared`: its `Content-Length`, already checked against `max_body_bytes`.
/// Answers `100 Continue` first when the sender waits for it.
pub async fn read(rq: &mut Request<'_>, declared: Option<u64>) -> Result<Buffered, Reply> {
    let server = &rq.live.config.server;
    let max = rq.live.config.webhooks.max_body_bytes;
    let mut held = rq.shared.bodies.reservation();
    // Reserved from the declared length before a byte is read; a chunked body's share grows as it comes.
    if let Some(n) = declared
        && !held.grow_to(n as usize, server.max_buffered_bytes)
    {
        return Err(overloaded());
    }
    continue_if_expected(rq.session).await?;
    let limit = declared.map_or(max, |n| (n as usize).min(max));
    let reading = read_within(
        rq.session,
        (limit, declared.is_some()),
        &mut held,
        server.max_buffered_bytes,
    );
    match tokio::time::timeout(server.body_timeout, reading).await {
        Ok(bytes) => Ok(Buffered {
            bytes: bytes?,
            _held: held,
        }),
        Err(_) => Err(too_slow()),
    }
}

/// Reads the body, at most `limit` bytes (the declared length when `declared`, else `max_body_bytes`).
async fn read_within(
    session: &mut ServerSession,
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
        broken()
    })? {
        // A single chunk of a declared body is the whole body: no copy.
        if declared && buf.is_empty() && chunk.len() == limit {
            return Ok(chunk);
        }
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
pub async fn continue_if_expected(session: &mut ServerSession) -> Result<(), Reply> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|_| broken())?;
    }
    Ok(())
}

/// The body could not be read whole: the sender sees the connection closed, or this.
fn broken() -> Reply {
    Reply::bad_request("bad request\n")
}

/// 408: the body did not arrive whole within `server.body_timeout_ms`.
pub fn too_slow() -> Reply {
    Reply::new(408, Outcome::Timeout, "request timeout\n").close()
}
