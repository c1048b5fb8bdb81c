//! W3C trace context and OpenTelemetry spans (SPEC "Operations"; README "Tracing").
//!
//! Every request has a place in a trace ([`Context`]): it continues the sender's `traceparent` when that
//! is valid, or starts a new trace. The sidecar has two spans in it: the server span for the request and a
//! client span, its child, for the exchange with the app. The app receives a `traceparent` whose parent
//! is that client span, on deliveries and on pass-through alike, with export on or off (propagation does
//! not depend on export). A malformed `traceparent` is replaced, and the `tracestate` that came with it
//! dropped (W3C: a vendor that cannot parse `traceparent` does not use `tracestate`).
//!
//! With `[tracing] otlp_endpoint`, a sampled request's spans are handed to [`export::Tracer`], which
//! sends them over OTLP/HTTP from a bounded queue. Without it, a request costs a header lookup, two
//! random ids and 55 bytes in the head for the app: no span is built, nothing is queued or allocated.

pub mod export;

use std::cell::Cell;

use http::HeaderMap;

pub use export::{Finished, Tracer};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A valid `traceparent` as the sender sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl Parent {
    /// The one `traceparent` of `headers`, when it is valid; none, several or a malformed one: `None`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Parent> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Parent::parse(v.as_bytes()),
            _ => None,
        }
    }

    /// W3C Trace Context, level 1: `version-traceid-parentid-flags`, lowercase hex. Version `00` is exactly
    /// 55 characters; a later version may be longer, its first four fields read as version `00`'s.
    /// Version `ff`, an all-zero trace id or span id: invalid.
    pub fn parse(value: &[u8]) -> Option<Parent> {
        let v = value.trim_ascii();
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&v[0..2])?[0];
        match version {
            0xff => return None,
            0 if v.len() != 55 => return None,
            0 => {}
            _ if v.len() > 55 && v[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let span_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Parent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// A request's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    /// The sender's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The sidecar's span for the request.
    pub server: [u8; 8],
    /// The sidecar's span for the exchange with the app: the parent of the app's span.
    pub client: [u8; 8],
    /// The sampled flag the app is sent. The sender's when it sent one; else, with export on, the
    /// `sample_ratio` decision, and with export off set (the sidecar records nothing, and leaves recording
    /// to the app).
    pub sampled: bool,
    /// Whether the spans are exported: export on and sampled.
    pub recording: bool,
}

impl Context {
    /// The context of a request with `headers`, under `tracer` (export on) or none.
    pub fn start(headers: &HeaderMap, tracer: Option<&Tracer>) -> Context {
        let parent = Parent::from_headers(headers);
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => random_trace_id(),
        };
        let sampled = match (parent, tracer) {
            (Some(p), _) => p.sampled,
            (None, Some(t)) => t.samples(&trace_id),
            (None, None) => true,
        };
        Context {
            trace_id,
            parent: parent.map(|p| p.span_id),
            server: random_span_id(),
            client: random_span_id(),
            sampled,
            recording: sampled && tracer.is_some(),
        }
    }

    /// Whether the sender's trace goes on: its `tracestate` goes on with it.
    pub fn continued(&self) -> bool {
        self.parent.is_some()
    }

    /// The `traceparent` the app receives: this trace, the client span as parent.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0..2].copy_from_slice(b"00");
        to_hex(&self.trace_id, &mut out[3..35]);
        to_hex(&self.client, &mut out[36..52]);
        out[53..55].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        out
    }

    /// The trace id as 32 lowercase hex digits (the access line's `trace_id`).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        to_hex(&self.trace_id, &mut out);
        out
    }
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn to_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// `2 * N` lowercase hex digits (W3C allows no uppercase).
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate().take(N) {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

thread_local! {
    /// SplitMix64 state, seeded from the OS's randomness once per thread: ids must not collide, they
    /// need not be secret.
    static RNG: Cell<u64> = Cell::new(u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([1; 8]),
    ));
}

fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_span_id() -> [u8; 8] {
    loop {
        let v = next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_span_id());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_its_sampled_flag() {
        let p = Parent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!Parent::parse(unsampled.as_bytes()).unwrap().sampled);
        // A later version may carry more fields after its own dash.
        let later = format!("01{}-extra", &VALID[2..]);
        assert!(Parent::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn a_malformed_traceparent_is_not_continued() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(Parent::parse(bad.as_bytes()), None, "{bad}");
        }
        let mut two = HeaderMap::new();
        two.append(TRACEPARENT, VALID.parse().unwrap());
        two.append(TRACEPARENT, VALID.parse().unwrap());
        assert_eq!(Parent::from_headers(&two), None);
    }

    #[test]
    fn the_app_gets_the_senders_trace_with_the_sidecars_span_as_parent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, VALID.parse().unwrap());
        let ctx = Context::start(&h, None);
        let sent = String::from_utf8(ctx.traceparent().to_vec()).unwrap();
        let p = Parent::parse(sent.as_bytes()).unwrap();
        assert_eq!(&sent[..36], &VALID[..36]);
        assert_eq!(p.span_id, ctx.client);
        assert_ne!(ctx.client, ctx.server);
        assert_eq!(
            ctx.parent,
            Some(Parent::parse(VALID.as_bytes()).unwrap().span_id)
        );
        assert!(p.sampled && !ctx.recording);
    }

    #[test]
    fn without_a_valid_traceparent_a_new_trace_starts() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        let a = Context::start(&h, None);
        let b = Context::start(&HeaderMap::new(), None);
        assert!(!a.continued() && a.parent.is_none());
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, [0; 16]);
        let sent = a.traceparent();
        assert_eq!(Parent::parse(&sent).map(|p| p.trace_id), Some(a.trace_id));
    }
}
