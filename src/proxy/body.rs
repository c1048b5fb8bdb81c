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
    // The budget is taken as the bytes arrive, not from the declared length: 32 connections that
    // declared 1 MiB and sent nothing once held all of it, and every delivery got 503 while they stayed.
    let mut held = rq.shared.bodies.reservation();
    if declared.is_some_and(|n| n as usize > server.max_buffered_bytes) {
        return Err(overloaded());
    }
    continue_if_expected(rq.session).await?;
    let limit = declared.map_or(max, |n| (n as usize).min(max));
    let reading = read_within(rq.session, limit, &mut held, server.max_buffered_bytes);
    match tokio::time::timeout(server.body_timeout, reading).await {
        Ok(bytes) => Ok(Buffered {
            bytes: bytes?,
            _held: held,
        }),
        Err(_) => Err(too_slow()),
    }
}

/// A body arrives into blocks of this size, each taken from the budget when it is started: what a
/// stalled sender holds is what it sent, rounded up to one block. Blocks of one size are reused by the
/// allocator as bodies come and go (growing one buffer by doubling left its outgrown copies resident:
/// 32 stalled 1 MiB uploads cost 35 MiB above the 32 they held).
const BLOCK: usize = 16 * 1024;

/// Reads the body, at most `limit` bytes (the declared length, or `max_body_bytes`), then joins its
/// blocks once: the joined copy is taken from the budget before it is made, and the blocks' share given
/// back after.
async fn read_within(
    session: &mut ServerSession,
    limit: usize,
    held: &mut Reservation,
    budget: usize,
) -> Result<Bytes, Reply> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut len = 0;
    while let Some(chunk) = session.read_request_body().await.map_err(|e| {
        log::debug!("request body failed: {}", e.etype().as_str());
        broken()
    })? {
        if len + chunk.len() > limit {
            return Err(too_large());
        }
        // The whole body in one piece (the usual small delivery): kept as it came, no copy.
        if len == 0 && chunk.len() == limit {
            if !held.grow_to(limit, budget) {
                return Err(overloaded());
            }
            return Ok(chunk);
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if blocks.last().is_none_or(|b| b.len() == BLOCK) {
                if !held.grow_to((blocks.len() + 1) * BLOCK, budget) {
                    return Err(overloaded());
                }
                blocks.push(Vec::with_capacity(BLOCK));
            }
            let block = blocks.last_mut().expect("a block was just ensured");
            let n = (BLOCK - block.len()).min(rest.len());
            block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        len += chunk.len();
    }
    if blocks.len() <= 1 {
        return Ok(blocks.pop().map(Bytes::from).unwrap_or_default());
    }
    if !held.grow_to(blocks.len() * BLOCK + len, budget) {
        return Err(overloaded());
    }
    let mut whole = Vec::with_capacity(len);
    for block in blocks {
        whole.extend_from_slice(&block);
    }
    held.shrink_to(len);
    Ok(Bytes::from(whole))
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
