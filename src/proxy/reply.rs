//! Answers the sidecar writes itself: every delivery step that stops a delivery returns one.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::Ctx;
use crate::outcome::Outcome;

/// A response the sidecar writes itself, and the outcome it stands for.
pub struct Reply {
    pub status: u16,
    pub outcome: Outcome,
    body: &'static str,
    extra: Vec<(&'static str, String)>,
    close: bool,
}

impl Reply {
    pub fn new(status: u16, outcome: Outcome, body: &'static str) -> Self {
        Self {
            status,
            outcome,
            body,
            extra: Vec::new(),
            close: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// Close the connection after answering: the request body was left unread.
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// `503` with `Retry-After`: Pitchpoint sends the delivery again later.
    pub fn retry_later(outcome: Outcome, body: &'static str) -> Self {
        Self::new(503, outcome, body).header("Retry-After", "5")
    }

    /// Writes the response directly, keeping the connection alive when it can (`respond_error` would
    /// not).
    pub async fn send(self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.ended(self.status, self.outcome);
        // A remembered 204 (or 304) is answered as one: no body, no framing headers.
        let body = if matches!(self.status, 204 | 304) {
            ""
        } else {
            self.body
        };
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.extra.len()))?;
        if !body.is_empty() {
            resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
            resp.insert_header("Content-Length", body.len().to_string())?;
        }
        for (name, value) in self.extra {
            resp.insert_header(name, value)?;
        }
        if self.close {
            resp.insert_header("Connection", "close")?;
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await
    }
}
