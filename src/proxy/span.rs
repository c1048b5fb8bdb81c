//! A finished request's spans for export (`crate::trace`), from how it ended: built only for a request
//! whose trace is exported, after its answer is written.

use std::time::{Instant, SystemTime};

use super::Request;
use super::ended::Ended;
use crate::outcome::Outcome;
use crate::trace::TRACESTATE;
use crate::trace::export::{Attr, ClientSpan, Finished};

/// The longest `tracestate` kept on the span (W3C: 512 characters is what every vendor must propagate).
const MAX_TRACESTATE: usize = 512;

/// The server span of the request, with the delivery's attributes, and the client span of the exchange
/// with the app when it was asked. A span whose request failed has status `ERROR`: a 5xx for the server
/// span, no answer or a 4xx / 5xx from the app for the client span.
pub fn finished(
    rq: &Request<'_>,
    ended: &Ended,
    (wall_start, started): (SystemTime, Instant),
) -> Finished {
    let req = rq.req();
    let method = req.method.as_str();
    // The path only: a query may carry an app's own tokens.
    let raw = String::from_utf8_lossy(req.raw_path());
    let path = raw.split('?').next().unwrap_or_default();
    let mut attributes = vec![
        ("http.request.method", Attr::Str(method.to_string())),
        ("url.path", Attr::Str(path.to_string())),
        ("http.response.status_code", Attr::Int(ended.status.into())),
        ("pps.outcome", Attr::Word(ended.outcome.label())),
        (
            "pps.duplicate",
            Attr::Bool(ended.outcome == Outcome::Duplicate),
        ),
        ("pps.request_id", Attr::Str(rq.request_id.clone())),
    ];
    let d = ended.delivery.as_ref();
    if let Some(d) = d {
        if let Some(tenant) = &d.tenant {
            attributes.push(("pps.tenant", Attr::Str(tenant.clone())));
        }
        attributes.push(("pps.topic", Attr::Str(d.topic.clone())));
        attributes.push(("pps.webhook_id", Attr::Str(d.webhook_id.clone())));
    }
    // As the access line says it: `none` for a delivery that was not proven.
    let verified = match &ended.verified {
        Some(v) => Some(v.label()),
        None if d.is_some() || ended.failure.is_some() => Some("none"),
        None => None,
    };
    if let Some(v) = verified {
        attributes.push(("pps.verified", Attr::Word(v)));
    }
    if let Some(f) = ended.failure {
        attributes.push(("pps.auth_failure", Attr::Word(f.label())));
    }
    let client = ended.app_started.map(|at| {
        let mut attributes = vec![("http.request.method", Attr::Str(method.to_string()))];
        if let Some(status) = ended.app_status {
            attributes.push(("http.response.status_code", Attr::Int(status.into())));
        }
        ClientSpan {
            offset: at.saturating_duration_since(started),
            took: ended.app_time.unwrap_or_else(|| at.elapsed()),
            attributes,
            error: match ended.app_status {
                None => Some("no answer from the app"),
                Some(s) if s >= 400 => Some("the app answered an error status"),
                Some(_) => None,
            },
        }
    });
    let tracestate = rq
        .trace
        .continued()
        .then(|| req.headers.get(TRACESTATE))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_TRACESTATE)
        .map(str::to_string);
    Finished {
        ctx: rq.trace,
        tracestate,
        name: method.to_string(),
        start: wall_start,
        took: started.elapsed(),
        attributes,
        error: (ended.status >= 500).then(|| ended.outcome.label()),
        client,
    }
}
