use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::delivery;

fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("POST", target.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn no_trace() -> Context {
    Context::start(&http::HeaderMap::new(), None)
}

fn hmac() -> Verified {
    Verified::Hmac {
        secret: Arc::from("0"),
    }
}

/// The head for the app of `original`, verified as `verified`.
fn head_as(original: &RequestHeader, verified: &Verified, strip: Option<&str>) -> String {
    let d = delivery::read(original).unwrap();
    let raw = original.raw_path().to_vec();
    let head = delivery_head(
        original,
        &Forwarding {
            target: Target::parse(&raw).unwrap(),
            delivery: &d,
            verified: Some(verified),
            strip_credentials: strip,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            request_id: "rid",
            trace: &no_trace(),
            body_len: 42,
        },
    );
    String::from_utf8(head).unwrap()
}

/// Every header of a written head, parsed back: (lowercase name, value).
fn parsed(head: &str) -> (String, Vec<(String, String)>) {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut slots);
    assert_eq!(
        r.parse(head.as_bytes()).unwrap(),
        httparse::Status::Complete(head.len()),
        "{head}"
    );
    let target = r.path.unwrap().to_string();
    let headers = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    (target, headers)
}

fn all(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn the_app_gets_canonical_identity_trust_headers_replaced_and_credentials_removed() {
    let original = req(
        "/webhooks?x=1",
        &[
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", " orders/placed "),
            ("x-pps-triggered-at", "2024-01-1T10:00:00.7777748Z"),
            ("x-pps-verified", "jwt"),
            ("x-pps-jwt-subject", "admin"),
            ("X-Pps-Hmac-Sha256", "ab"),
            ("X_Pps_Hmac_Sha256", "ab"),
            ("authorization", "Bearer x"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x_pps_topic", "other"),
            ("x-custom", "kept"),
        ],
    );
    let head = head_as(&original, &hmac(), Some("x-pps-hmac-sha256"));
    let (target, h) = parsed(&head);
    assert_eq!(target, "/webhooks?x=1");
    let one = |n: &str| {
        let v = all(&h, n);
        assert!(v.len() <= 1, "{n} sent {} times: {head}", v.len());
        v.into_iter().next()
    };
    assert_eq!(one("x-pps-topic").as_deref(), Some("orders/placed"));
    assert_eq!(
        one("x-pps-triggered-at").as_deref(),
        Some("2024-01-01T10:00:00.7777748Z")
    );
    assert_eq!(
        one("x-pps-triggered-at-original").as_deref(),
        Some("2024-01-1T10:00:00.7777748Z")
    );
    assert_eq!(one("x-pps-verified").as_deref(), Some("hmac"));
    for gone in [
        "x-pps-jwt-subject",
        "x-pps-hmac-sha256",
        "x_pps_hmac_sha256",
        "x_pps_topic",
        "authorization",
        "transfer-encoding",
        "connection",
        "x-secret-hop",
    ] {
        assert_eq!(one(gone), None, "{gone}: {head}");
    }
    assert_eq!(one("content-length").as_deref(), Some("42"));
    assert_eq!(one("x-request-id").as_deref(), Some("rid"));
    assert_eq!(one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        one("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(one("x-custom").as_deref(), Some("kept"));
    assert!(head.contains("X-Pps-Topic: orders/placed\r\n"), "{head}");
}

#[test]
fn credentials_are_kept_when_configured_so() {
    let original = req(
        "/webhooks",
        &[
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", "t"),
            ("X-Pps-Hmac-Sha256", "ab"),
        ],
    );
    let head = head_as(&original, &hmac(), None);
    assert!(head.contains("X-Pps-Hmac-Sha256: ab\r\n"), "{head}");
}

#[test]
fn a_jwt_subject_that_is_not_a_header_value_is_left_out() {
    let original = req(
        "/webhooks",
        &[("x-pps-webhook-id", "1"), ("x-pps-topic", "t")],
    );
    let verified = Verified::Jwt {
        subject: "a\r\nX-Pps-Verified: forged".into(),
        issuer: "https://issuer.example".into(),
        kid: "k".into(),
    };
    let head = head_as(&original, &verified, None);
    assert!(!head.contains("forged"), "{head}");
    assert!(head.contains("X-Pps-Verified: jwt\r\n"), "{head}");
    assert!(head.contains("X-Pps-Jwt-Issuer: https://issuer.example\r\n"));
}

#[test]
fn an_absolute_form_target_reaches_the_app_in_origin_form_with_its_host() {
    let original = req(
        "http://orders.example:8080/webhooks/x?y=1",
        &[
            ("host", "elsewhere"),
            ("x-pps-webhook-id", "1"),
            ("x-pps-topic", "t"),
        ],
    );
    let (target, h) = parsed(&head_as(&original, &hmac(), None));
    assert_eq!(target, "/webhooks/x?y=1");
    assert_eq!(all(&h, "host"), ["orders.example:8080"]);
}

#[test]
fn a_triggered_at_that_is_not_text_is_forwarded_as_sent() {
    let mut original = req(
        "/webhooks",
        &[("x-pps-webhook-id", "1"), ("x-pps-topic", "t")],
    );
    original
        .append_header(
            "x-pps-triggered-at",
            HeaderValue::from_bytes(b"2024\xff").unwrap(),
        )
        .unwrap();
    let d = delivery::read(&original).unwrap();
    let head = delivery_head(
        &original,
        &Forwarding {
            target: Target::parse(b"/webhooks").unwrap(),
            delivery: &d,
            verified: None,
            strip_credentials: None,
            client_ip: None,
            request_id: "rid",
            trace: &no_trace(),
            body_len: 0,
        },
    );
    let needle: &[u8] = b"X-Pps-Triggered-At: 2024\xff\r\n";
    assert!(head.windows(needle.len()).any(|w| w == needle));
    assert!(String::from_utf8_lossy(&head).contains("X-Pps-Verified: none\r\n"));
}

#[test]
fn pass_through_loses_trust_headers_in_every_spelling_and_closes_its_connection() {
    let original = req(
        "/other",
        &[
            ("X_Pps_Verified", "hmac"),
            ("x-pps_jwt_subject", "admin"),
            ("X-PPS-DUPLICATE", "true"),
            ("x_pps_REPLAYED", "true"),
            ("proxy-authorization", "Basic x"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("content-length", "3"),
            ("x-request-id", "a b"),
            ("authorization", "Bearer app-own"),
            ("x-custom", "kept"),
        ],
    );
    let raw = original.raw_path().to_vec();
    let head = passthrough_head(
        &original,
        Target::parse(&raw).unwrap(),
        BodyFraming::Length(3),
        None,
        "fresh-id",
        &no_trace(),
    );
    let head = String::from_utf8(head).unwrap();
    let (_, h) = parsed(&head);
    assert_eq!(all(&h, "x-pps-verified"), ["none"]);
    for gone in [
        "x_pps_verified",
        "x-pps_jwt_subject",
        "x-pps-duplicate",
        "x_pps_replayed",
        "proxy-authorization",
        "x-hop",
    ] {
        assert!(all(&h, gone).is_empty(), "{gone}: {head}");
    }
    assert_eq!(all(&h, "connection"), ["close"]);
    assert_eq!(all(&h, "content-length"), ["3"]);
    assert_eq!(all(&h, "x-request-id"), ["fresh-id"]);
    assert_eq!(all(&h, "authorization"), ["Bearer app-own"]);
    assert_eq!(all(&h, "x-custom"), ["kept"]);
}

#[test]
fn a_request_id_that_could_mean_more_than_an_id_is_replaced() {
    let id = |v: &str| request_id(&req("/", &[("x-request-id", v)]));
    assert_eq!(id("abc-123_x.y:z/w+1=@"), "abc-123_x.y:z/w+1=@");
    for bad in ["x outcome=forwarded", "a\"b", "", &"a".repeat(129)] {
        let got = id(bad);
        assert_ne!(got, bad);
        assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
    }
}

/// Header names a sender may use, in spellings that matter: identity, trust, credentials, framing.
const NAMES: [&str; 14] = [
    "X-Pps-Webhook-Id",
    "x-pps-topic",
    "X_PPS_TENANT_ID",
    "X-Pps-Sub-Topic",
    "x-pps-triggered-at",
    "X-Pps-Verified",
    "x_pps_jwt_subject",
    "X-Pps-Replayed",
    "X-Pps-Hmac-Sha256",
    "x_pps_hmac_sha256",
    "Authorization",
    "Connection",
    "Transfer-Encoding",
    "X-Custom",
];

/// Whatever valid header text a sender sends, a delivery's head for the app is one well-formed head
/// with exactly one value of each header the sidecar writes, and no credential or trust header of the
/// sender's in any spelling. Counts the inputs that get past `delivery::read`: a property whose inputs
/// never reach its assertion tests nothing.
#[test]
fn any_valid_header_text_gives_one_well_formed_head_for_the_app() {
    let reached = AtomicUsize::new(0);
    let value = "[ -~]{0,24}";
    let header = (0..NAMES.len(), value);
    let strategy = (
        proptest::collection::vec(header, 0..12),
        "[!-~]{1,36}",
        "[a-z/]{1,20}",
        "\\PC{0,20}",
    );
    let mut runner = TestRunner::new(Config {
        cases: 2_000,
        ..Config::default()
    });
    runner
        .run(&strategy, |(extra, id, topic, subject)| {
            let mut r = req(
                "/webhooks",
                &[("X-Pps-Webhook-Id", &id), ("x-pps-topic", &topic)],
            );
            for (i, v) in &extra {
                r.append_header(NAMES[*i].to_string(), v.as_str()).unwrap();
            }
            let Ok(d) = delivery::read(&r) else {
                return Ok(());
            };
            reached.fetch_add(1, Ordering::Relaxed);
            let verified = Verified::Jwt {
                subject,
                issuer: "i".into(),
                kid: "k".into(),
            };
            let head = delivery_head(
                &r,
                &Forwarding {
                    target: Target::parse(b"/webhooks").unwrap(),
                    delivery: &d,
                    verified: Some(&verified),
                    strip_credentials: Some("x-pps-hmac-sha256"),
                    client_ip: None,
                    request_id: "rid",
                    trace: &no_trace(),
                    body_len: 0,
                },
            );
            let head = String::from_utf8_lossy(&head).into_owned();
            let (_, h) = parsed(&head);
            for name in [
                "x-pps-webhook-id",
                "x-pps-topic",
                "x-pps-verified",
                "content-length",
            ] {
                prop_assert_eq!(all(&h, name).len(), 1, "{} in {}", name, head);
            }
            prop_assert_eq!(all(&h, "x-pps-verified"), vec!["jwt".to_string()]);
            for (name, _) in &h {
                let n = spelled(name);
                prop_assert!(
                    n != "x-pps-hmac-sha256" && n != "authorization" && n != "connection",
                    "{} in {}",
                    name,
                    head
                );
            }
            Ok(())
        })
        .unwrap();
    let reached = reached.into_inner();
    assert!(
        reached > 500,
        "only {reached} of 2000 inputs were deliveries"
    );
}

#[test]
fn the_app_gets_one_traceparent_of_the_sidecars_and_tracestate_only_with_a_continued_trace() {
    const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (traceparent, continued) in [(SENT, true), ("00-zz-bad-01", false)] {
        let original = req(
            "/other",
            &[
                ("traceparent", traceparent),
                ("tracestate", "vendor=1"),
                ("x-custom", "kept"),
            ],
        );
        let trace = Context::start(&original.headers, None);
        assert_eq!(trace.continued(), continued);
        let raw = original.raw_path().to_vec();
        let head = passthrough_head(
            &original,
            Target::parse(&raw).unwrap(),
            BodyFraming::None,
            None,
            "rid",
            &trace,
        );
        let head = String::from_utf8(head).unwrap();
        let (_, h) = parsed(&head);
        let expected = String::from_utf8(trace.traceparent().to_vec()).unwrap();
        assert_eq!(all(&h, "traceparent"), [expected.as_str()], "{head}");
        assert_ne!(expected, SENT);
        let state: &[&str] = if continued { &["vendor=1"] } else { &[] };
        assert_eq!(all(&h, "tracestate"), state, "{head}");
    }
}
