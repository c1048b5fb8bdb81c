//! The request head for the app, as bytes, and the hop-by-hop rules of both directions. No socket: the
//! caller decides which headers go, this writes them where they cannot break the framing.

use http::HeaderMap;

/// Connection-scoped headers (RFC 9110, 7.6.1) that never cross a proxy, in either direction.
/// `Transfer-Encoding` is among them because the sidecar frames each message it writes itself.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header name (any case) is hop-by-hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Names listed in `Connection`, lowercased: hop-by-hop for this message only. Usually none.
pub fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A request head written straight into the bytes that go on the wire: one buffer, no header map.
pub struct HeadWriter {
    out: Vec<u8>,
}

impl HeadWriter {
    /// `method` and `target` come from a parsed request line (tokens and an origin-form target).
    pub fn new(method: &str, target: &str) -> Self {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Self { out }
    }

    /// Writes `name: value`. A value that is not a valid header value (CR, LF, NUL...) is left out rather
    /// than written: it would start a header, or a request, of the sender's choosing. `false` then.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> bool {
        let valid = is_header_value(value);
        if valid {
            self.out.extend_from_slice(name);
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value);
            self.out.extend_from_slice(b"\r\n");
        }
        valid
    }

    /// The head, ended by its empty line.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"\r\n");
        self.out
    }
}

/// `http::HeaderValue`'s rule (visible ASCII, space, tab, obs-text), checked without building one: a
/// `HeaderValue` copies the bytes into an allocation of its own, ten times per delivery.
fn is_header_value(value: &[u8]) -> bool {
    // No early return, so that the loop vectorizes.
    value
        .iter()
        .fold(true, |ok, &b| ok & ((b >= 32 && b != 127) || b == b'\t'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_is_what_the_http_crate_accepts_byte_for_byte() {
        for b in 0..=255u8 {
            for v in [vec![b], vec![b'a', b, b'z']] {
                assert_eq!(
                    is_header_value(&v),
                    http::HeaderValue::from_bytes(&v).is_ok(),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn a_value_that_could_end_the_line_is_never_written() {
        let mut w = HeadWriter::new("POST", "/webhooks");
        assert!(w.header(b"X-Ok", b"fine value"));
        assert!(!w.header(b"X-Pps-Jwt-Subject", b"a\r\nX-Pps-Verified: forged"));
        assert!(!w.header(b"X-Nul", b"a\0b"));
        let head = String::from_utf8(w.finish()).unwrap();
        assert_eq!(head, "POST /webhooks HTTP/1.1\r\nX-Ok: fine value\r\n\r\n");
    }

    #[test]
    fn hop_by_hop_names_in_any_case_and_those_connection_lists() {
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(is_hop_by_hop("proxy-authorization"));
        assert!(!is_hop_by_hop("x-custom"));
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive, X-Hop".parse().unwrap());
        h.append("connection", " , close".parse().unwrap());
        assert_eq!(connection_listed(&h), ["keep-alive", "x-hop", "close"]);
    }
}
