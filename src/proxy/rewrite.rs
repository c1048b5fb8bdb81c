//! What the app receives: the request head the sidecar writes for a delivery and for a pass-through
//! request, from the sender's head. One pass over the sender's headers (names keep their case) straight
//! into the bytes of the head (`upstream::head`), instead of cloning and editing a header map.
//!
//! Both kinds of request lose, in every spelling: the trust headers only the sidecar may set
//! (`headers::TRUSTED`), hop-by-hop headers and those `Connection` names, and the framing, which the
//! sidecar redoes. Both get `X-Request-Id` (the access line's), `X-Forwarded-For` and `X-Forwarded-Proto`.
//! A delivery also loses the sender's copies of its identity (written canonically instead) and, unless
//! configured otherwise, its credentials; a pass-through request is told `X-Pps-Verified: none` and
//! `Connection: close` (see `upstream::outgoing`).

use std::net::IpAddr;

use pingora::http::RequestHeader;

use crate::auth::Verified;
use crate::delivery::Delivery;
use crate::headers::{self, IDENTITY, TRUSTED, is_one_of, spelled};
use crate::route::Target;
use crate::timefmt;
use crate::trace::{self, Context};
use crate::upstream::head::{HeadWriter, connection_listed, is_hop_by_hop};

/// What the sidecar adds to a delivery it forwards.
pub struct Forwarding<'a> {
    pub target: Target<'a>,
    pub delivery: &'a Delivery,
    /// `None` in shadow mode when verification failed: the app is told `none`.
    pub verified: Option<&'a Verified>,
    /// The HMAC header's name, lowercase, when credentials are removed (the bearer token's header goes
    /// with it); `None` when they are forwarded.
    pub strip_credentials: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    pub trace: &'a Context,
    pub body_len: usize,
}

/// The head of a delivery for the app: canonical `X-Pps-*`, trust headers replaced, credentials removed,
/// framing redone for the buffered body.
pub fn delivery_head(req: &RequestHeader, f: &Forwarding<'_>) -> Vec<u8> {
    let hmac = f.strip_credentials.map(spelled);
    let credential = |n: &str| {
        hmac.as_deref()
            .is_some_and(|h| n == h || n == "authorization")
    };
    let mut w = HeadWriter::new(req.method.as_str(), f.target.origin);
    let sent = copy(req, &mut w, f.target, f.trace, |n| {
        is_one_of(n, &IDENTITY) || credential(n)
    });

    let d = f.delivery;
    w.header(headers::TOPIC.as_bytes(), d.topic.as_bytes());
    if let Some(v) = &d.sub_topic {
        w.header(headers::SUB_TOPIC.as_bytes(), v.as_bytes());
    }
    if let Some(v) = &d.tenant {
        w.header(headers::TENANT_ID.as_bytes(), v.as_bytes());
    }
    w.header(headers::WEBHOOK_ID.as_bytes(), d.webhook_id.as_bytes());
    if let Some(raw) = &d.triggered_at {
        triggered_at(&mut w, raw.as_bytes());
    }
    match f.verified {
        Some(Verified::Jwt {
            subject, issuer, ..
        }) => {
            w.header(headers::VERIFIED.as_bytes(), b"jwt");
            // A `sub` is JSON and may hold any character: one that is no header value is left out.
            w.header(headers::JWT_SUBJECT.as_bytes(), subject.as_bytes());
            w.header(headers::JWT_ISSUER.as_bytes(), issuer.as_bytes());
        }
        Some(Verified::Hmac { .. }) => {
            w.header(headers::VERIFIED.as_bytes(), b"hmac");
        }
        None => {
            w.header(headers::VERIFIED.as_bytes(), b"none");
        }
    }
    sent.write_common(&mut w, f.client_ip, f.request_id, f.trace);
    w.header(b"Content-Length", f.body_len.to_string().as_bytes());
    w.finish()
}

/// How a pass-through request's body goes to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// The head of a pass-through request for the app: unverified, and on a connection of its own.
pub fn passthrough_head(
    req: &RequestHeader,
    target: Target<'_>,
    framing: BodyFraming,
    client_ip: Option<IpAddr>,
    request_id: &str,
    trace: &Context,
) -> Vec<u8> {
    let mut w = HeadWriter::new(req.method.as_str(), target.origin);
    let sent = copy(req, &mut w, target, trace, |_| false);
    w.header(headers::VERIFIED.as_bytes(), b"none");
    sent.write_common(&mut w, client_ip, request_id, trace);
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            w.header(b"Content-Length", n.to_string().as_bytes());
        }
        BodyFraming::Chunked => {
            w.header(b"Transfer-Encoding", b"chunked");
        }
    }
    w.header(b"Connection", b"close");
    w.finish()
}

/// What the sender's head said that the sidecar folds into headers of its own.
struct Copied<'r> {
    forwarded_for: Option<&'r str>,
    has_proto: bool,
}

/// Copies the sender's headers that go on, dropping the ones every request loses and those `drop`
/// names (by `spelled` name). An absolute-form target's authority replaces `Host` (RFC 9112, 3.2.2).
/// The sender's `traceparent` is replaced (`write_common`); its `tracestate` goes on only with the trace
/// it belongs to (`trace` continues it).
fn copy<'r>(
    req: &'r RequestHeader,
    w: &mut HeadWriter,
    target: Target<'_>,
    trace: &Context,
    drop: impl Fn(&str) -> bool,
) -> Copied<'r> {
    let listed = connection_listed(&req.headers);
    let mut copied = Copied {
        forwarded_for: None,
        has_proto: false,
    };
    let mut wire_names = req.case_header_iter();
    for (name, value) in req.headers.iter() {
        let wire = wire_names.next().map(|(n, _)| n.as_slice());
        let n = spelled(name.as_str());
        match n.as_ref() {
            "x-forwarded-for" => {
                if copied.forwarded_for.is_none() {
                    copied.forwarded_for = value.to_str().ok();
                }
                continue;
            }
            "x-forwarded-proto" => copied.has_proto = true,
            "host" if target.authority.is_some() => continue,
            "content-length" | "expect" | "x-request-id" | trace::TRACEPARENT => continue,
            trace::TRACESTATE if !trace.continued() => continue,
            _ => {}
        }
        let dropped = is_hop_by_hop(&n)
            || listed.iter().any(|l| *l == n || spelled(l) == n)
            || is_one_of(&n, &TRUSTED)
            || drop(&n);
        if !dropped {
            w.header(wire.unwrap_or(name.as_str().as_bytes()), value.as_bytes());
        }
    }
    if let Some(authority) = target.authority {
        w.header(b"Host", authority.as_bytes());
    }
    copied
}

impl Copied<'_> {
    fn write_common(
        &self,
        w: &mut HeadWriter,
        client_ip: Option<IpAddr>,
        request_id: &str,
        trace: &Context,
    ) {
        w.header(headers::REQUEST_ID.as_bytes(), request_id.as_bytes());
        w.header(trace::TRACEPARENT.as_bytes(), &trace.traceparent());
        if let Some(xff) = forwarded_for(self.forwarded_for, client_ip) {
            w.header(headers::FORWARDED_FOR.as_bytes(), xff.as_bytes());
        }
        // An ingress in front may have terminated TLS and said so; otherwise the sidecar saw plain http.
        if !self.has_proto {
            w.header(headers::FORWARDED_PROTO.as_bytes(), b"http");
        }
    }
}

/// `X-Pps-Triggered-At` as RFC 3339 UTC with the value as sent in `-Original` when it parses into a
/// four-digit UTC year; as sent otherwise (never a reason to refuse a delivery).
fn triggered_at(w: &mut HeadWriter, raw: &[u8]) {
    let rewritten = std::str::from_utf8(raw)
        .ok()
        .and_then(timefmt::parse_lenient)
        .and_then(|ts| timefmt::to_rfc3339(&ts));
    match rewritten {
        Some(utc) => {
            w.header(headers::TRIGGERED_AT.as_bytes(), utc.as_bytes());
            w.header(headers::TRIGGERED_AT_ORIGINAL.as_bytes(), raw);
        }
        None => {
            w.header(headers::TRIGGERED_AT.as_bytes(), raw);
        }
    }
}

/// `X-Forwarded-For` as the app gets it: the sender's chain, if any, with the client's address appended.
fn forwarded_for(previous: Option<&str>, client_ip: Option<IpAddr>) -> Option<String> {
    match (previous.map(str::trim).filter(|v| !v.is_empty()), client_ip) {
        (Some(prev), Some(ip)) => Some(format!("{prev}, {ip}")),
        (Some(prev), None) => Some(prev.to_string()),
        (None, ip) => ip.map(|ip| ip.to_string()),
    }
}

/// The request id to use: the sender's when it is a plain token (letters, digits, `-_.:/+=@`, at most
/// 128 bytes), or a fresh one: it goes into logs and to the app, where it must not mean more.
pub fn request_id(req: &RequestHeader) -> String {
    let safe = |v: &&str| {
        !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
    };
    req.headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(safe)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests;
