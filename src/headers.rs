//! The `X-Pps-*` headers: read and checked on the way in, rewritten canonically on the way to the app.

use http::HeaderName;
use pingora::http::RequestHeader;

use crate::auth::Verified;
use crate::timefmt;

pub const TOPIC: &str = "X-Pps-Topic";
pub const SUB_TOPIC: &str = "X-Pps-Sub-Topic";
pub const TENANT_ID: &str = "X-Pps-Tenant-Id";
pub const WEBHOOK_ID: &str = "X-Pps-Webhook-Id";
pub const TRIGGERED_AT: &str = "X-Pps-Triggered-At";
pub const TRIGGERED_AT_ORIGINAL: &str = "X-Pps-Triggered-At-Original";
pub const VERIFIED: &str = "X-Pps-Verified";
pub const JWT_SUBJECT: &str = "X-Pps-Jwt-Subject";
pub const JWT_ISSUER: &str = "X-Pps-Jwt-Issuer";
pub const DUPLICATE: &str = "X-Pps-Duplicate";
/// On a delivery re-sent from the spool (`crate::spool`).
pub const REPLAYED: &str = "X-Pps-Replayed";
pub const REQUEST_ID: &str = "X-Request-Id";
pub const FORWARDED_FOR: &str = "X-Forwarded-For";
pub const FORWARDED_PROTO: &str = "X-Forwarded-Proto";

/// The names looked up on every delivery, ready-made: a `&str` key is parsed and lowercased on each lookup.
mod lower {
    use http::HeaderName;

    pub const TOPIC: HeaderName = HeaderName::from_static("x-pps-topic");
    pub const SUB_TOPIC: HeaderName = HeaderName::from_static("x-pps-sub-topic");
    pub const TENANT_ID: HeaderName = HeaderName::from_static("x-pps-tenant-id");
    pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("x-pps-webhook-id");
    pub const TRIGGERED_AT: HeaderName = HeaderName::from_static("x-pps-triggered-at");
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
}

/// Headers only the sidecar may set: whatever arrives under these names is dropped before the app sees it.
const TRUSTED: [&str; 6] = [
    VERIFIED,
    JWT_SUBJECT,
    JWT_ISSUER,
    TRIGGERED_AT_ORIGINAL,
    DUPLICATE,
    REPLAYED,
];

/// The identifying headers of one delivery, trimmed and checked.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub topic: String,
    pub sub_topic: Option<String>,
    pub tenant: Option<String>,
    pub webhook_id: String,
    /// As sent (trimmed); `None` when absent or not text.
    pub triggered_at: Option<String>,
}

impl Delivery {
    /// The dedup key: tenant and webhook id. Ids are compared as canonicalised (UUIDs in lowercase).
    pub fn dedup_key(&self) -> String {
        let tenant = self.tenant.as_deref().unwrap_or("");
        let mut key = String::with_capacity(tenant.len() + 1 + self.webhook_id.len());
        key.push_str(tenant);
        key.push('\n');
        key.push_str(&self.webhook_id);
        key
    }
}

/// Reads the delivery's headers; `Err` is the 400 reason.
pub fn read_delivery(req: &RequestHeader) -> Result<Delivery, String> {
    let webhook_id = single(req, &lower::WEBHOOK_ID, WEBHOOK_ID)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("missing {WEBHOOK_ID}"))?;
    let topic = single(req, &lower::TOPIC, TOPIC)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("missing {TOPIC}"))?;
    let sub_topic = single(req, &lower::SUB_TOPIC, SUB_TOPIC)?.filter(|v| !v.is_empty());
    let tenant = single(req, &lower::TENANT_ID, TENANT_ID)?.filter(|v| !v.is_empty());
    // Never a 400 for this one: an unusual value is forwarded as it came.
    let triggered_at = single(req, &lower::TRIGGERED_AT, TRIGGERED_AT)
        .ok()
        .flatten();
    Ok(Delivery {
        webhook_id: canonical_id(webhook_id),
        topic,
        sub_topic,
        tenant,
        triggered_at,
    })
}

/// The one value of `name`, trimmed. The same value repeated counts once; different values are ambiguous.
fn single(req: &RequestHeader, key: &HeaderName, name: &str) -> Result<Option<String>, String> {
    let mut found: Option<String> = None;
    for value in req.headers.get_all(key) {
        let v = std::str::from_utf8(value.as_bytes())
            .map_err(|_| format!("{name} is not valid text"))?
            .trim();
        match &found {
            Some(prev) if prev != v => {
                return Err(format!("{name} sent twice with different values"));
            }
            Some(_) => {}
            None => found = Some(v.to_string()),
        }
    }
    Ok(found)
}

/// A UUID in lowercase; anything else unchanged.
fn canonical_id(id: String) -> String {
    let b = id.as_bytes();
    let is_uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if is_uuid { id.to_ascii_lowercase() } else { id }
}

/// What the sidecar adds to a delivery it forwards.
pub struct Forwarding<'a> {
    pub delivery: &'a Delivery,
    /// `None` in shadow mode when verification failed: the app is told `none`.
    pub verified: Option<&'a Verified>,
    pub strip_credentials: Option<&'a HeaderName>,
    pub client_ip: Option<String>,
    pub request_id: &'a str,
    pub body_len: usize,
}

/// The request head sent to the app, as bytes: request line and headers. Canonical `X-Pps-*`, trust headers
/// replaced, credentials removed, framing redone for the buffered body. Written in one pass over the
/// sender's headers (names keep their case) instead of cloning and editing a header map: this runs for
/// every delivery.
pub fn upstream_head(original: &RequestHeader, f: &Forwarding<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(original.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(original.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let listed = connection_listed(original);
    let mut previous_xff: Option<&str> = None;
    let mut has_proto = false;
    let mut wire_names = original.case_header_iter();
    for (name, value) in original.headers.iter() {
        let wire = wire_names.next().map(|(n, _)| n.as_slice());
        let n = name.as_str();
        if n == "x-forwarded-for" {
            // Folded into the one this sidecar writes below.
            if previous_xff.is_none() {
                previous_xff = value.to_str().ok();
            }
            continue;
        }
        has_proto |= n == "x-forwarded-proto";
        // `HeaderName`s are lowercase; `_` counts as `-` (`spelled`).
        let dropped = dropped_on_forward(&spelled(n))
            || listed.iter().any(|l| l == n)
            || f.strip_credentials
                .is_some_and(|h| name == http::header::AUTHORIZATION || name == h);
        if !dropped {
            line(&mut out, wire.unwrap_or(n.as_bytes()), value.as_bytes());
        }
    }

    let d = f.delivery;
    // Most values below came from the sender's valid headers, but a JWT's `sub` is JSON and may hold any
    // character: a value that is not a valid header value is left out, never written (CR LF would start
    // a header of the sender's choosing, or a second request).
    let mut set = |name: &str, value: &str| {
        if http::HeaderValue::from_str(value).is_ok() {
            line(&mut out, name.as_bytes(), value.as_bytes());
        }
    };
    set(TOPIC, &d.topic);
    if let Some(v) = &d.sub_topic {
        set(SUB_TOPIC, v);
    }
    if let Some(v) = &d.tenant {
        set(TENANT_ID, v);
    }
    set(WEBHOOK_ID, &d.webhook_id);
    if let Some(raw) = &d.triggered_at {
        match timefmt::parse_lenient(raw) {
            Some(ts) => {
                set(TRIGGERED_AT, &timefmt::format_rfc3339(&ts));
                set(TRIGGERED_AT_ORIGINAL, raw);
            }
            None => set(TRIGGERED_AT, raw),
        }
    }
    match f.verified {
        Some(Verified::Jwt {
            subject, issuer, ..
        }) => {
            set(VERIFIED, "jwt");
            set(JWT_SUBJECT, subject);
            set(JWT_ISSUER, issuer);
        }
        Some(Verified::Hmac { .. }) => set(VERIFIED, "hmac"),
        None => set(VERIFIED, "none"),
    }
    set(REQUEST_ID, f.request_id);
    if let Some(xff) = forwarded_for(previous_xff, f.client_ip.as_deref()) {
        set(FORWARDED_FOR, &xff);
    }
    // An ingress in front may have terminated TLS and said so; otherwise the sidecar saw plain http.
    if !has_proto {
        set(FORWARDED_PROTO, "http");
    }
    set("Content-Length", &f.body_len.to_string());
    out.extend_from_slice(b"\r\n");
    out
}

/// Headers dropped from a forwarded delivery, by lowercase name: the connection-scoped ones that never
/// cross a proxy (RFC 9110, 7.6.1), the framing redone for the buffered body, and those the sidecar
/// writes itself (the `X-Pps-*` it normalises, the trust headers only it may set, the request id).
fn dropped_on_forward(lowercase: &str) -> bool {
    is_hop_by_hop(lowercase)
        || matches!(
            lowercase,
            "expect"
                | "content-length"
                | "x-pps-verified"
                | "x-pps-jwt-subject"
                | "x-pps-jwt-issuer"
                | "x-pps-triggered-at-original"
                | "x-pps-duplicate"
                | "x-pps-replayed"
                | "x-pps-topic"
                | "x-pps-sub-topic"
                | "x-pps-tenant-id"
                | "x-pps-webhook-id"
                | "x-pps-triggered-at"
                | "x-request-id"
        )
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Names listed in `Connection`, lowercased: hop-by-hop for this request only. Usually none.
fn connection_listed(req: &RequestHeader) -> Vec<String> {
    connection_listed_in(&req.headers)
}

fn connection_listed_in(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// For unverified pass-through (`other_paths = "forward"`): no trust header reaches the app in any
/// spelling, it is told `X-Pps-Verified: none`, and hop-by-hop headers stop here. The body's framing
/// headers stay: Pingora streams the body by them.
pub fn sanitize_passthrough(req: &mut RequestHeader, client_ip: Option<&str>, request_id: &str) {
    let listed = connection_listed_in(&req.headers);
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            let n = spelled(name.as_str());
            is_trusted(&n) || is_hop_by_hop(&n) || listed.iter().any(|l| *l == n)
        })
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    let _ = req.insert_header(VERIFIED, "none");
    if req.headers.get(REQUEST_ID).is_none() {
        let _ = req.insert_header(REQUEST_ID, request_id);
    }
    forwarded_headers(req, client_ip);
}

/// The app's answer on the pass-through path: hop-by-hop headers, and those its `Connection` names,
/// are not relayed.
pub fn sanitize_passthrough_response(resp: &mut pingora::http::ResponseHeader) {
    let listed = connection_listed_in(&resp.headers);
    let doomed: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            (is_hop_by_hop(n) && n != "transfer-encoding") || listed.iter().any(|l| l == n)
        })
        .cloned()
        .collect();
    for name in doomed {
        resp.remove_header(&name);
    }
}

/// A lowercase header name as CGI, WSGI and Rack apps read it: `X_Pps_Verified` is `X-Pps-Verified` to them.
fn spelled(lowercase: &str) -> std::borrow::Cow<'_, str> {
    if lowercase.contains('_') {
        lowercase.replace('_', "-").into()
    } else {
        lowercase.into()
    }
}

/// A header only the sidecar may set, by its `spelled` name.
fn is_trusted(spelled: &str) -> bool {
    TRUSTED.iter().any(|t| t.eq_ignore_ascii_case(spelled))
}

/// Connection-scoped headers (RFC 9110, 7.6.1) that never cross a proxy, in either direction.
const HOP_BY_HOP: [&str; 9] = [
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

/// Whether a lowercase header name is hop-by-hop.
fn is_hop_by_hop(lowercase: &str) -> bool {
    HOP_BY_HOP.contains(&lowercase)
}

fn forwarded_headers(req: &mut RequestHeader, client_ip: Option<&str>) {
    let previous = req.headers.get(FORWARDED_FOR).and_then(|v| v.to_str().ok());
    if let Some(xff) = forwarded_for(previous, client_ip) {
        let _ = req.insert_header(FORWARDED_FOR, xff);
    }
    // An ingress in front may have terminated TLS and said so; otherwise the sidecar saw plain http.
    if req.headers.get(FORWARDED_PROTO).is_none() {
        let _ = req.insert_header(FORWARDED_PROTO, "http");
    }
}

/// `X-Forwarded-For` as the app gets it: the sender's chain, if any, with the client's address appended.
fn forwarded_for(previous: Option<&str>, client_ip: Option<&str>) -> Option<String> {
    match (previous.map(str::trim).filter(|v| !v.is_empty()), client_ip) {
        (Some(prev), Some(ip)) => Some(format!("{prev}, {ip}")),
        (Some(prev), None) => Some(prev.to_string()),
        (None, ip) => ip.map(str::to_string),
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
        .get(lower::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(safe)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Connection-scoped headers of the app's answer, never relayed (RFC 9110 7.6.1; the `Proxy-*` ones
/// speak to the next proxy, which is this sidecar). `Transfer-Encoding` is in the list because the answer
/// is re-framed on the way out. Names the app lists in its `Connection` header are dropped too, by the
/// codec in `upstream`.
pub fn is_response_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head for the app of `original`, verified as `verified`, credentials kept.
    fn head_as(original: &RequestHeader, verified: &Verified) -> String {
        let d = read_delivery(original).unwrap();
        let head = upstream_head(
            original,
            &Forwarding {
                delivery: &d,
                verified: Some(verified),
                strip_credentials: None,
                client_ip: None,
                request_id: "rid",
                body_len: 0,
            },
        );
        String::from_utf8(head).unwrap()
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/webhooks", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn every_header_the_sidecar_writes_is_dropped_from_the_senders_copy() {
        for name in TRUSTED.iter().chain(&[
            TOPIC,
            SUB_TOPIC,
            TENANT_ID,
            WEBHOOK_ID,
            TRIGGERED_AT,
            REQUEST_ID,
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
        ]) {
            assert!(dropped_on_forward(&name.to_ascii_lowercase()), "{name}");
        }
        assert!(!dropped_on_forward("x-custom"));
    }

    #[test]
    fn a_jwt_subject_that_is_not_a_header_value_is_left_out() {
        let original = req(&[("x-pps-webhook-id", "1"), ("x-pps-topic", "t")]);
        let verified = Verified::Jwt {
            subject: "a\r\nX-Pps-Verified: forged".into(),
            issuer: "https://issuer.example".into(),
            kid: "k1".into(),
        };
        let wire = head_as(&original, &verified);
        assert!(!wire.contains("forged"), "{wire}");
        assert!(
            !wire.to_ascii_lowercase().contains("x-pps-jwt-subject"),
            "{wire}"
        );
        assert!(wire.contains("X-Pps-Verified: jwt\r\n"), "{wire}");
        assert!(
            wire.contains("X-Pps-Jwt-Issuer: https://issuer.example\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn uuid_ids_are_lowercased_others_kept() {
        let d = read_delivery(&req(&[
            ("x-pps-webhook-id", " 279E4E55-DFA0-4E04-B717-148AE547AB7D "),
            ("x-pps-topic", "orders/placed"),
        ]))
        .unwrap();
        assert_eq!(d.webhook_id, "279e4e55-dfa0-4e04-b717-148ae547ab7d");
        let d = read_delivery(&req(&[
            ("x-pps-webhook-id", "Order-ABC"),
            ("x-pps-topic", "t"),
        ]))
        .unwrap();
        assert_eq!(d.webhook_id, "Order-ABC");
    }

    #[test]
    fn missing_or_ambiguous_required_headers_are_rejected() {
        assert!(read_delivery(&req(&[("x-pps-topic", "t")])).is_err());
        assert!(read_delivery(&req(&[("x-pps-webhook-id", "1"), ("x-pps-topic", " ")])).is_err());
        let twice = req(&[
            ("x-pps-webhook-id", "1"),
            ("x-pps-webhook-id", "2"),
            ("x-pps-topic", "t"),
        ]);
        assert!(
            read_delivery(&twice)
                .unwrap_err()
                .contains("different values")
        );
        let same_twice = req(&[
            ("x-pps-webhook-id", "1"),
            ("X-PPS-WEBHOOK-ID", " 1"),
            ("x-pps-topic", "t"),
        ]);
        assert!(read_delivery(&same_twice).is_ok());
    }

    #[test]
    fn unusual_triggered_at_never_rejects() {
        let d = read_delivery(&req(&[
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", "t"),
            ("x-pps-triggered-at", "a"),
            ("x-pps-triggered-at", "b"),
        ]))
        .unwrap();
        assert_eq!(d.triggered_at, None);
    }

    #[test]
    fn upstream_request_is_canonical_and_trust_headers_are_replaced() {
        let original = req(&[
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", " orders/placed "),
            ("x-pps-triggered-at", "2024-01-1T10:00:00.7777748Z"),
            ("x-pps-verified", "jwt"),
            ("x-pps-jwt-subject", "admin"),
            ("X-Pps-Hmac-Sha256", "ab"),
            ("authorization", "Bearer x"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-custom", "kept"),
        ]);
        let d = read_delivery(&original).unwrap();
        let head = upstream_head(
            &original,
            &Forwarding {
                delivery: &d,
                verified: Some(&Verified::Hmac { secret: "0".into() }),
                strip_credentials: Some(&HeaderName::from_static("x-pps-hmac-sha256")),
                client_ip: Some("127.0.0.1".into()),
                request_id: "rid",
                body_len: 42,
            },
        );
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut parsed);
        assert_eq!(
            r.parse(&head).unwrap(),
            httparse::Status::Complete(head.len())
        );
        assert_eq!(
            (r.method, r.path, r.version),
            (Some("POST"), Some("/webhooks"), Some(1))
        );
        let all = |n: &str| -> Vec<String> {
            r.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
                .collect()
        };
        let get = |n: &str| {
            let v = all(n);
            assert!(v.len() <= 1, "{n} sent {} times", v.len());
            v.into_iter().next()
        };
        assert_eq!(get("x-pps-topic").as_deref(), Some("orders/placed"));
        assert_eq!(
            get("x-pps-triggered-at").as_deref(),
            Some("2024-01-01T10:00:00.7777748Z")
        );
        assert_eq!(
            get("x-pps-triggered-at-original").as_deref(),
            Some("2024-01-1T10:00:00.7777748Z")
        );
        assert_eq!(get("x-pps-verified").as_deref(), Some("hmac"));
        assert_eq!(get("x-pps-jwt-subject"), None);
        assert_eq!(get("x-pps-hmac-sha256"), None);
        assert_eq!(get("authorization"), None);
        assert_eq!(get("transfer-encoding"), None);
        assert_eq!(get("connection"), None);
        assert_eq!(get("x-secret-hop"), None);
        assert_eq!(get("content-length").as_deref(), Some("42"));
        assert_eq!(get("x-request-id").as_deref(), Some("rid"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("10.0.0.1, 127.0.0.1")
        );
        assert_eq!(get("x-custom").as_deref(), Some("kept"));
        let wire = String::from_utf8(head.clone()).unwrap();
        assert!(wire.contains("X-Pps-Topic: orders/placed\r\n"), "{wire}");
        assert!(wire.contains("X-Pps-Webhook-Id: 1\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\n"), "{wire}");
    }

    #[test]
    fn a_request_id_that_could_mean_more_than_an_id_is_replaced() {
        let id = |v: &str| request_id(&req(&[("x-request-id", v)]));
        assert_eq!(id("abc-123_x.y:z/w+1=@"), "abc-123_x.y:z/w+1=@");
        for bad in [
            "x outcome=forwarded",
            "a\"b",
            "",
            &"a".repeat(129),
            "caf\u{e9}",
        ] {
            let got = id(bad);
            assert_ne!(got, bad);
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
        }
    }

    #[test]
    fn trust_headers_and_hop_by_hop_headers_never_pass_in_any_spelling() {
        let mut r = req(&[
            ("X_Pps_Verified", "hmac"),
            ("x-pps_jwt_subject", "admin"),
            ("X-PPS-DUPLICATE", "true"),
            ("x_pps_REPLAYED", "true"),
            ("proxy-authorization", "Basic x"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-custom", "kept"),
        ]);
        sanitize_passthrough(&mut r, None, "rid");
        assert_eq!(r.headers.get(VERIFIED).unwrap(), "none");
        assert_eq!(r.headers.get_all(VERIFIED).iter().count(), 1);
        for gone in [
            "x_pps_verified",
            "x-pps_jwt_subject",
            "x-pps-duplicate",
            "x_pps_replayed",
            "proxy-authorization",
            "connection",
            "x-hop",
        ] {
            assert!(r.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r.headers.get("x-custom").unwrap(), "kept");

        let original = req(&[
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", "t"),
            ("X_Pps_Verified", "jwt"),
            ("X-Pps-Replayed", "true"),
            ("x_pps_replayed", "true"),
            ("x_pps_topic", "other"),
            ("proxy-authorization", "Basic x"),
        ]);
        let wire = head_as(&original, &Verified::Hmac { secret: "0".into() }).to_ascii_lowercase();
        assert!(!wire.contains("x_pps"), "{wire}");
        assert!(!wire.contains("proxy-authorization"), "{wire}");
        assert!(!wire.contains("replayed"), "{wire}");
        assert!(wire.contains("x-pps-verified: hmac\r\n"), "{wire}");
    }

    proptest::proptest! {
        /// Whatever values a sender puts in the `X-Pps-*` headers, reading them never panics, and the head
        /// written for the app is one well-formed head with one value per canonical header.
        #[test]
        fn any_header_values_give_a_well_formed_head_or_a_400(
            values in proptest::collection::vec(proptest::collection::vec(0x20u8..=0xff, 0..40), 5),
            subject in "\\PC{0,20}",
        ) {
            let names = ["x-pps-webhook-id", "x-pps-topic", "x-pps-tenant-id", "x-pps-sub-topic", "x-pps-triggered-at"];
            let mut r = RequestHeader::build("POST", b"/webhooks", None).unwrap();
            for (name, v) in names.iter().zip(&values) {
                if let Ok(v) = http::HeaderValue::from_bytes(v) {
                    r.append_header(*name, v).unwrap();
                }
            }
            let Ok(d) = read_delivery(&r) else { return Ok(()) };
            let verified = Verified::Jwt {
                subject,
                issuer: "i".into(),
                kid: "k".into(),
            };
            let head = upstream_head(&r, &Forwarding {
                delivery: &d,
                verified: Some(&verified),
                strip_credentials: None,
                client_ip: None,
                request_id: "rid",
                body_len: 0,
            });
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut parsed);
            proptest::prop_assert_eq!(req.parse(&head).unwrap(), httparse::Status::Complete(head.len()));
            for name in ["x-pps-webhook-id", "x-pps-topic", "x-pps-verified"] {
                let n = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
                proptest::prop_assert_eq!(n, 1, "{}", name);
            }
        }
    }
}
