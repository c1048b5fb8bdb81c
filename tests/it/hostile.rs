//! The trust boundary, tried as an attacker would: spellings of the webhook path, trust headers in other
//! spellings, malformed values and framing, thrown at the real binary with `other_paths = "forward"`,
//! where a mistake would hand the app an unverified delivery.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn forged(path: &str) -> Delivery {
    let mut d = Delivery::json().sign_with("not-the-secret");
    d.path = path.into();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_webhook_path_is_verified_or_refused_never_passed_through() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nother_paths = \"forward\"\n").await;
    for path in [
        "/%77ebhooks",
        "/WEBHOOKS",
        "/webhooks;x=1",
        "/webhooksx",
        "/index.php/webhooks",
        "/a/../webhooks",
        "/./webhooks/orders",
    ] {
        let r = sidecar.send(&forged(path)).await;
        assert_eq!(r.status, 403, "{path}: a forgery on a webhook path");
    }
    for path in [
        "/webhooks%2forders",
        "/%5cwebhooks",
        "/%2577ebhooks",
        "/../webhooks",
        "//webhooks",
        "//h/webhooks",
        "/webhooks%3Fx",
        "/webhook%C5%BF",
    ] {
        let r = sidecar.send(&forged(path)).await;
        assert_eq!(r.status, 400, "{path}: ambiguous");
    }
    assert_eq!(app.count(), 0, "nothing reached the app");
    let mut d = Delivery::json();
    d.path = "/WebHooks".into();
    assert_eq!(
        sidecar.send(&d).await.status,
        200,
        "verified, it goes through"
    );
    assert_eq!(app.requests()[0].exact("X-Pps-Verified"), Some("hmac"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_at_with_a_multibyte_character_is_forwarded_not_a_crash() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut bytes = Delivery::json().bytes();
    let at = b"X-Pps-Triggered-At: ";
    let i = bytes.windows(at.len()).position(|w| w == at).unwrap() + at.len();
    let end = i + bytes[i..].windows(2).position(|w| w == b"\r\n").unwrap();
    bytes.splice(i..end, "2024-01-01T10:00+1\u{20ac}".bytes());
    let r = send(sidecar.addr, &bytes).await;
    assert_eq!(r.status, 200);
    let got = &app.requests()[0];
    assert_eq!(got.all("x-pps-triggered-at").len(), 1);
    assert_eq!(
        got.get("x-pps-triggered-at-original"),
        None,
        "not parsed, kept as sent"
    );
}

/// Requests no sender should be able to turn into an unverified delivery, or a crash.
fn corpus() -> Vec<Vec<u8>> {
    let body = br#"{"id":1}"#;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let post = |target: &str, extra: &str, body: &[u8]| -> Vec<u8> {
        let mut r = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nX-Pps-Topic: orders/placed\r\nX-Pps-Webhook-Id: 1\r\n\
             X-Pps-Hmac-Sha256: {}\r\n{extra}Content-Length: {}\r\n\r\n",
            "0".repeat(64),
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    for target in [
        "/webhooks",
        "/WEBHOOKS/",
        "/%77%65%62%68%6f%6f%6b%73",
        "/webhooks%00",
        "/webhooks%",
        "/%c0%af/webhooks",
        "/..%2fwebhooks",
        "http://x/webhooks",
        "/webhooks?%",
        "*",
        "/\u{20ac}/../webhooks",
    ] {
        out.push(post(target, "", body));
    }
    for extra in [
        "X_Pps_Verified: hmac\r\n",
        "x-pps-verified: jwt\r\nX-PPS-JWT-SUBJECT: root\r\n",
        "X-Pps-Triggered-At: \u{20ac}\u{20ac}\u{20ac}\r\n",
        "X-Pps-Triggered-At: 9999-99-99T99:99+99:99\r\n",
        "X-Pps-Webhook-Id: 2\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 5, 6\r\n",
        "Expect: 100-continue\r\n",
        "Connection: X-Pps-Topic\r\n",
        "Authorization: Bearer \u{20ac}.\u{20ac}.\u{20ac}\r\n",
        "Authorization: Bearer a.b.c\r\n",
        " folded: header\r\n",
    ] {
        out.push(post("/webhooks", extra, body));
    }
    out.push(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n".to_vec());
    out.push(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec());
    out.push(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort".to_vec());
    out.push(b"GET /webhooks HTTP/1.0\r\n\r\n".to_vec());
    out.push(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n".to_vec());
    out.push(
        format!(
            "POST /webhooks HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200_000)
        )
        .into_bytes(),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_malformed_requests_never_reaches_the_app_unverified_and_the_sidecar_keeps_serving()
 {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nother_paths = \"forward\"\n").await;
    for (i, req) in corpus().iter().enumerate() {
        let answer = raw(sidecar.addr, req).await;
        let status = status_of(&answer);
        assert!(
            status.is_none_or(|s| s != 200),
            "request {i} was answered 200: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    for got in app.requests() {
        let canonical = pps_sidecar::route::canonical(&got.path);
        assert!(
            !canonical.is_some_and(|c| c.starts_with("/webhooks")),
            "the app saw a webhook path unverified: {}",
            got.path
        );
        assert_eq!(got.all("x-pps-verified"), vec!["none"], "{}", got.path);
    }
    assert_eq!(sidecar.exited(), None, "the process is still running");
    assert_eq!(
        sidecar.send(&Delivery::json()).await.status,
        200,
        "and serving"
    );
    assert!(
        !sidecar.log().contains("panicked"),
        "no request task panicked"
    );
}

/// Reads one response head, byte by byte, so that nothing after it is consumed.
async fn head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("a head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the head ended");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_204_is_a_bodiless_204() {
    let app = TestApp::start().await;
    app.set(Behaviour::Answer(204));
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 204);
    let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&d.bytes()).await.unwrap();
    let dup = head(&mut s).await;
    assert!(dup.starts_with("http/1.1 204"), "{dup}");
    assert!(dup.contains("x-pps-duplicate: true"), "{dup}");
    assert!(!dup.contains("content-length"), "a 204 has no body: {dup}");
    // The next answer on the connection is read as an answer, not after a leftover body.
    s.write_all(&Delivery::json().bytes()).await.unwrap();
    let next = head(&mut s).await;
    assert!(next.starts_with("http/1.1 204"), "{next}");
    assert_eq!(app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_of_the_apps_answer_never_reach_the_sender() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nother_paths = \"forward\"\n").await;
    app.set(Behaviour::Raw {
        answer: b"HTTP/1.1 200 OK\r\nConnection: X-App-Hop\r\nX-App-Hop: 1\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        close: false,
    });
    let pass_through = send(sidecar.addr, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let delivery = sidecar.send(&Delivery::json()).await;
    for r in [pass_through, delivery] {
        assert_eq!(r.status, 200);
        assert_eq!(r.get("x-kept"), Some("yes"));
        assert_eq!(r.get("x-app-hop"), None, "named in the app's Connection");
        assert_eq!(r.get("proxy-authenticate"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_a_502_and_the_retry_of_the_event_reaches_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    ] {
        app.set(Behaviour::Raw {
            answer,
            close: true,
        });
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(answer));
        assert_eq!(r.get("x-pps-duplicate"), None);
    }
    app.set(Behaviour::Answer(200));
    let r = sidecar.send(&d).await;
    assert_eq!(
        r.status, 200,
        "the claim was released: the retry is not a duplicate"
    );
    assert_eq!(r.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 3);
}
