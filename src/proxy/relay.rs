//! The app's answer, relayed to the sender.

use bytes::BytesMut;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::Ctx;
use crate::upstream::{App, Exchange};

/// App answers up to this size are read whole before they are relayed.
const RELAY_BUFFER: usize = 64 * 1024;

/// How relaying failed: the app's answer broke (the app did not acknowledge the event, so its claim is
/// released), or the sender's side did after the app's answer came whole (the event stays acknowledged).
pub enum RelayError {
    App(Box<Error>),
    Sender(Box<Error>),
}

impl RelayError {
    pub fn into_inner(self) -> Box<Error> {
        match self {
            RelayError::App(e) | RelayError::Sender(e) => e,
        }
    }
}

fn sender(e: Box<Error>) -> RelayError {
    RelayError::Sender(e)
}

/// Relays the answer whose head has arrived. It is held until it is complete, so that the app's
/// connection is back in the pool by the time the sender, having read the answer, sends its next
/// delivery. An answer larger than `RELAY_BUFFER` is streamed from the point it outgrows the buffer.
pub async fn relay(
    session: &mut Session,
    ctx: &mut Ctx,
    app: &App,
    mut exchange: Exchange,
) -> std::result::Result<(), RelayError> {
    let mut resp = exchange.take_header();
    // 204 and 304 carry no body, and their framing headers are not the sidecar's to change.
    let bodiless = matches!(ctx.status, 204 | 304);
    let mut held = Some(BytesMut::new());
    loop {
        let chunk = exchange.body_chunk().await.map_err(|e| {
            // Nothing relayed yet: the sender gets a 502 and retries. Already streaming: the cut
            // connection shows the truncation. Either way the claim is released.
            log::warn!("app response body failed: {}", e.etype().as_str());
            RelayError::App(e)
        })?;
        match (chunk, held.take()) {
            (Some(chunk), Some(mut buf)) if buf.len() + chunk.len() <= RELAY_BUFFER => {
                buf.extend_from_slice(&chunk);
                held = Some(buf);
            }
            (Some(chunk), Some(buf)) => {
                if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
                    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
                        .map_err(sender)?;
                }
                session
                    .write_response_header(Box::new(resp.clone()), false)
                    .await
                    .map_err(sender)?;
                session
                    .write_response_body(Some(buf.freeze()), false)
                    .await
                    .map_err(sender)?;
                session
                    .write_response_body(Some(chunk), false)
                    .await
                    .map_err(sender)?;
            }
            (Some(chunk), None) => session
                .write_response_body(Some(chunk), false)
                .await
                .map_err(sender)?,
            (None, Some(buf)) => {
                app.finish(exchange);
                if !bodiless {
                    resp.insert_header(http::header::CONTENT_LENGTH, buf.len().to_string())
                        .map_err(sender)?;
                }
                session
                    .write_response_header(Box::new(resp), false)
                    .await
                    .map_err(sender)?;
                return session
                    .write_response_body(Some(buf.freeze()), true)
                    .await
                    .map_err(sender);
            }
            (None, None) => {
                app.finish(exchange);
                return session
                    .write_response_body(None, true)
                    .await
                    .map_err(sender);
            }
        }
    }
}
