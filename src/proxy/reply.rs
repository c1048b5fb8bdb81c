//! Answers the sidecar writes itself: every delivery step that stops a delivery returns one.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use crate::auth::{Failure, RETRY_AFTER};
use crate::outcome::Outcome;
use crate::upstream::AppFailure;

/// A response the sidecar writes itself, and what it stands for.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub outcome: Outcome,
    /// Why authentication failed, when that is why the delivery stopped (or, in shadow mode, went on).
    pub failure: Option<Failure>,
    body: &'static str,
    extra: Vec<(&'static str, String)>,
    close: bool,
}

impl Reply {
    pub fn new(status: u16, outcome: Outcome, body: &'static str) -> Self {
        Self {
            status,
            outcome,
            failure: None,
            body,
            extra: Vec::new(),
            close: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// Close the connection after answering: the request is not to be trusted with another.
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn failure(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }

    /// `503` with `Retry-After`: Pitchpoint sends the delivery again later.
    pub fn retry_later(outcome: Outcome, body: &'static str) -> Self {
        Self::new(503, outcome, body).header("Retry-After", RETRY_AFTER.as_secs().to_string())
    }

    /// `502` or `504`: the app gave no answer, and Pitchpoint will retry.
    pub fn app_failed(failure: AppFailure) -> Self {
        let body = match failure {
            AppFailure::Unreachable => "bad gateway\n",
            AppFailure::Timeout => "gateway timeout\n",
        };
        Self::new(failure.status(), Outcome::UpstreamError, body)
    }

    pub fn bad_request(body: &'static str) -> Self {
        Self::new(400, Outcome::BadRequest, body).close()
    }

    /// Writes the answer itself, keeping the connection alive when it can (`respond_error` would not).
    /// A body left unread closes the connection (Pingora sees to it). Within `limit`: a sender that does
    /// not read its answer is not waited for.
    pub async fn send(&self, session: &mut ServerSession, limit: Duration) -> bool {
        // A remembered 204 (or 304) is answered as one: no body, no framing headers.
        let body = if matches!(self.status, 204 | 304) {
            ""
        } else {
            self.body
        };
        let Ok(resp) = self.head(body) else {
            return false;
        };
        if self.close {
            session.set_keepalive(None);
        }
        let write = async {
            session.write_response_header(Box::new(resp)).await?;
            session
                .write_response_body(Bytes::from_static(body.as_bytes()), true)
                .await
        };
        let written = matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())));
        if !written {
            session.set_keepalive(None);
        }
        written
    }

    fn head(&self, body: &str) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(3 + self.extra.len()))?;
        if !body.is_empty() {
            resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
            resp.insert_header("Content-Length", body.len())?;
        }
        for (name, value) in &self.extra {
            resp.insert_header(*name, value)?;
        }
        Ok(resp)
    }
}
