//! The delivery path end to end: the real binary between a raw client and a real HTTP app on loopback.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_delivery_reaches_app_once_with_identical_body_and_canonical_headers() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json()
        .set("X-Pps-Topic", Some("  orders/placed "))
        .set(
            "X-Pps-Webhook-Id",
            Some("279E4E55-DFA0-4E04-B717-148AE547AB7D"),
        )
        .set("x-pps-tenant-id", Some("OU1243"))
        .sign_with(SECRET);
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.get("X-App"),
        Some("yes"),
        "the app's own headers are relayed"
    );
    assert_eq!(r.text(), "app says 200\n", "the app's body is relayed");

    let got = app.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/webhooks");
    assert_eq!(req.body, d.body, "body byte for byte");
    assert_eq!(
        req.get("content-length"),
        Some(d.body.len().to_string().as_str())
    );
    assert_eq!(req.exact("X-Pps-Topic"), Some("orders/placed"));
    assert_eq!(req.exact("X-Pps-Sub-Topic"), Some("product:adv/adv-120"));
    assert_eq!(req.exact("X-Pps-Tenant-Id"), Some("OU1243"));
    assert_eq!(
        req.exact("X-Pps-Webhook-Id"),
        Some("279e4e55-dfa0-4e04-b717-148ae547ab7d")
    );
    assert_eq!(
        req.exact("X-Pps-Triggered-At"),
        Some("2024-01-01T10:00:00.7777748Z")
    );
    assert_eq!(
        req.exact("X-Pps-Triggered-At-Original"),
        Some("2024-01-1T10:00:00.7777748Z")
    );
    assert_eq!(req.exact("X-Pps-Verified"), Some("hmac"));
    assert_eq!(
        req.get("x-pps-hmac-sha256"),
        None,
        "the signature is removed"
    );
    assert_eq!(req.get("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(req.get("x-forwarded-proto"), Some("http"));
    assert!(req.get("x-request-id").is_some_and(|v| v.len() >= 16));
    assert_eq!(
        req.all("x-pps-topic").len(),
        1,
        "no duplicate header left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_or_malformed_signature_gets_403_and_app_sees_nothing() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let forged = Delivery::json().sign_with("not-the-secret");
    let tampered = {
        let mut d = Delivery::json();
        d.body = br#"{"order":{"id":1001,"total":"0.01"}}"#.to_vec();
        d
    };
    let cases = [
        ("forged", forged),
        ("tampered body", tampered),
        ("missing", Delivery::json().set("X-Pps-Hmac-Sha256", None)),
        (
            "not hex",
            Delivery::json().set("X-Pps-Hmac-Sha256", Some("zz")),
        ),
        ("empty", Delivery::json().set("X-Pps-Hmac-Sha256", Some(""))),
        (
            "truncated",
            Delivery::json().set("X-Pps-Hmac-Sha256", Some(&"ab".repeat(31))),
        ),
        (
            "two signatures",
            Delivery::json().add("X-Pps-Hmac-Sha256", &"00".repeat(32)),
        ),
    ];
    for (what, d) in cases {
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, 403, "{what}");
        assert!(
            r.body.len() < 32,
            "{what}: short body that helps no attacker"
        );
    }
    assert_eq!(app.count(), 0, "the app is never contacted");

    let log = sidecar.log_with("outcome=unauthorized", 7).await;
    assert!(log.contains("auth_failure=bad_signature"), "{log}");
    assert!(log.contains("auth_failure=malformed_signature"), "{log}");
    assert!(log.contains("auth_failure=missing_credentials"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_secret_verifies_during_rotation_and_expired_secret_does_not() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start_with(
        app.addr,
        r#"
[auth.hmac]
secrets = [
  { value = "old-expired", not_after = "2020-01-01T00:00:00Z" },
  { value = "current-one" },
  { env = "PPS_TEST_NEXT_SECRET" },
]
"#,
        &[("PPS_TEST_NEXT_SECRET", "next-one")],
    )
    .await;
    assert_eq!(
        sidecar
            .send(&Delivery::json().sign_with("current-one"))
            .await
            .status,
        200
    );
    assert_eq!(
        sidecar
            .send(&Delivery::json().sign_with("next-one"))
            .await
            .status,
        200
    );
    assert_eq!(
        sidecar
            .send(&Delivery::json().sign_with("old-expired"))
            .await
            .status,
        403
    );
    assert_eq!(app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_body_is_forwarded_intact_and_one_byte_more_is_413_without_touching_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let medium: Vec<u8> = big[..100 * 1024].to_vec();

    for (what, body, chunked) in [
        (
            "100 KiB, above Pingora's 64 KiB retry buffer",
            medium.clone(),
            false,
        ),
        ("1 MiB", big.clone(), false),
        ("1 MiB chunked", big.clone(), true),
    ] {
        let mut d = Delivery::new(body.clone());
        d.chunked = chunked;
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let last = app.requests().pop().unwrap();
        assert!(last.body == body, "{what}: body altered");
        assert_eq!(
            last.get("content-length"),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
        assert_eq!(last.get("transfer-encoding"), None, "{what}");
    }
    assert_eq!(app.count(), 3);

    let mut too_big = big.clone();
    too_big.push(b'!');
    for chunked in [false, true] {
        let mut d = Delivery::new(too_big.clone());
        d.chunked = chunked;
        let mut conn = Conn::open(sidecar.addr).await;
        let r = conn.send(&d.bytes()).await;
        assert_eq!(r.status, 413, "chunked={chunked}");
        assert!(
            conn.is_closed().await,
            "the unread body is not left on a kept-alive connection"
        );
    }
    assert_eq!(
        app.count(),
        3,
        "the app is never touched by an oversized body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nmax_body_bytes = 1000\n").await;
    let d = Delivery::new(vec![b'x'; 5000]);
    let head_only: Vec<u8> = {
        let full = d.bytes();
        let end = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        full[..end].to_vec()
    };
    let mut conn = Conn::open(sidecar.addr).await;
    conn.write(&head_only).await;
    let r = conn.read().await.expect("answered from the headers alone");
    assert_eq!(r.status, 413);
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json().add("Expect", "100-continue");
    let full = d.bytes();
    let end = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut conn = Conn::open(sidecar.addr).await;
    conn.write(&full[..end]).await;
    // A client that waits for 100 Continue sends nothing more until it comes.
    let interim = conn.read_interim().await;
    assert_eq!(interim, Some(100), "100 Continue before the body");
    conn.write(&full[end..]).await;
    let r = conn.read().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(app.requests()[0].body, d.body);
    assert_eq!(
        app.requests()[0].get("expect"),
        None,
        "the app is not asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_expect_100_continue_gets_the_interim_response() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is required for this test (.ci/run installs it)");
    }
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::new(vec![b'a'; 2048]);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, &d.body).unwrap();
    let mut cmd = tokio::process::Command::new("curl");
    // Without a 100 Continue, curl would wait this long before sending the body anyway and the
    // verbose output below would not show one.
    cmd.args(["-sS", "-v", "--expect100-timeout", "30", "-o", "/dev/null"])
        .arg("-w")
        .arg("%{http_code}")
        .arg(format!("http://{}/webhooks", sidecar.addr))
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg("-H")
        .arg("Expect: 100-continue");
    for (k, v) in &d.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{stderr}");
    assert!(stderr.contains("HTTP/1.1 100 Continue"), "{stderr}");
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_trust_headers_from_outside_never_reach_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json()
        .add("X-Pps-Verified", "jwt")
        .add("x-pps-jwt-subject", "admin")
        .add("X-PPS-JWT-ISSUER", "https://evil.example")
        .add("X-Pps-Triggered-At-Original", "spoof")
        .add("X-Pps-Duplicate", "true");
    assert_eq!(sidecar.send(&d).await.status, 200);
    let req = &app.requests()[0];
    assert_eq!(req.all("x-pps-verified"), vec!["hmac"]);
    assert!(req.all("x-pps-jwt-subject").is_empty());
    assert!(req.all("x-pps-jwt-issuer").is_empty());
    assert!(req.all("x-pps-duplicate").is_empty());
    assert_eq!(
        req.all("x-pps-triggered-at-original"),
        vec!["2024-01-1T10:00:00.7777748Z"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_triggered_at_is_forwarded_as_sent() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json().set("X-Pps-Triggered-At", Some("last tuesday"));
    assert_eq!(sidecar.send(&d).await.status, 200);
    let req = &app.requests()[0];
    assert_eq!(req.exact("X-Pps-Triggered-At"), Some("last tuesday"));
    assert_eq!(req.get("x-pps-triggered-at-original"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_missing_headers_and_ambiguous_ids_are_refused() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;

    let mut get = Delivery::json();
    get.method = "GET".into();
    let r = sidecar.send(&get).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.get("allow"), Some("POST"));

    for (what, d) in [
        ("no id", Delivery::json().set("X-Pps-Webhook-Id", None)),
        (
            "empty id",
            Delivery::json().set("X-Pps-Webhook-Id", Some("  ")),
        ),
        ("no topic", Delivery::json().set("X-Pps-Topic", None)),
        (
            "two different ids",
            Delivery::json().add("X-Pps-Webhook-Id", "another-id"),
        ),
        (
            "two different topics",
            Delivery::json().add("x-pps-topic", "orders/updated"),
        ),
    ] {
        assert_eq!(sidecar.send(&d).await.status, 400, "{what}");
    }
    let same_twice = Delivery::json();
    let id = same_twice.id();
    let same_twice = same_twice.add("x-pps-webhook-id", &id);
    assert_eq!(
        sidecar.send(&same_twice).await.status,
        200,
        "same value twice is fine"
    );
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_comes_before_header_rules() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json()
        .set("X-Pps-Webhook-Id", None)
        .sign_with("wrong");
    assert_eq!(
        sidecar.send(&d).await.status,
        403,
        "a forger learns nothing about headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_get_404_by_default() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    for path in ["/", "/admin", "/webhook", "/healthz", "/metrics"] {
        let mut d = Delivery::json();
        d.path = path.into();
        assert_eq!(sidecar.send(&d).await.status, 404, "{path}");
    }
    let mut d = Delivery::json();
    d.path = "/webhooks/orders?x=1".into();
    assert_eq!(
        sidecar.send(&d).await.status,
        200,
        "a sub-path is a delivery path"
    );
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_forward_passes_through_unverified_without_trust_headers() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nother_paths = \"forward\"\n").await;
    let r = send(
        sidecar.addr,
        b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pps-Verified: hmac\r\nX_Pps_Verified: hmac\r\nX-Pps-Jwt-Subject: root\r\nProxy-Authorization: Basic eA==\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let req = &app.requests()[0];
    assert_eq!(req.path, "/status");
    assert_eq!(req.all("x-pps-verified"), vec!["none"], "the app is told");
    assert_eq!(
        req.get("x_pps_verified"),
        None,
        "CGI would read it as X-Pps-Verified"
    );
    assert_eq!(req.get("x-pps-jwt-subject"), None);
    assert_eq!(req.get("proxy-authorization"), None, "hop-by-hop");
    assert_eq!(req.get("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_tenant_topic_or_sub_topic_gets_403() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[filters]\ntenants = [\"OU1243\"]\ntopics = [\"orders/placed\", \"orders/updated\"]\n",
    )
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    let other_tenant = Delivery::json().set("X-Pps-Tenant-Id", Some("OU9999"));
    assert_eq!(sidecar.send(&other_tenant).await.status, 403);
    let no_tenant = Delivery::json().set("X-Pps-Tenant-Id", None);
    assert_eq!(sidecar.send(&no_tenant).await.status, 403);
    let other_topic = Delivery::json().set("X-Pps-Topic", Some("customers/created"));
    assert_eq!(sidecar.send(&other_topic).await.status, 403);
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_alive() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut conn = Conn::open(sidecar.addr).await;
    let forged = Delivery::json().sign_with("nope");
    assert_eq!(conn.send(&forged.bytes()).await.status, 403);
    let no_topic = Delivery::json().set("X-Pps-Topic", None);
    assert_eq!(conn.send(&no_topic.bytes()).await.status, 400);
    assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_the_secret_signature_or_body() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::new(r#"{"card":"4111111111111111"}"#);
    let sig = d.header("X-Pps-Hmac-Sha256").unwrap().to_string();
    sidecar.send(&d).await;
    sidecar.send(&d.clone().sign_with("forged-secret")).await;
    sidecar.log_with("outcome=forwarded", 1).await;
    let log = sidecar.log_with("outcome=unauthorized", 1).await;
    for needle in [SECRET, &sig, "4111111111111111", "forged-secret"] {
        assert!(!log.contains(needle), "log leaks {needle}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_deliveries_reuse_one_connection_to_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    for _ in 0..20 {
        assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    }
    let conns: Vec<usize> = app.requests().iter().map(|r| r.conn).collect();
    let distinct: std::collections::BTreeSet<usize> = conns.iter().copied().collect();
    // Each of the sidecar's two threads keeps its own connections, and each delivery here comes on a new
    // connection to the sidecar, served by either thread: two connections to the app carry them all (on a
    // loaded machine a third was seen, rarely). Without reuse there would be twenty.
    assert!(distinct.len() <= 3, "connections used in turn: {conns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_answers_of_any_size_and_framing_are_relayed_intact() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    for (len, chunked) in [
        (10, true),
        (40 * 1024, true),
        (200 * 1024, false),
        (200 * 1024, true),
    ] {
        app.set(Behaviour::Large { len, chunked });
        let mut conn = Conn::open(sidecar.addr).await;
        let r = conn.send(&Delivery::json().bytes()).await;
        assert_eq!(r.status, 200, "{len} chunked={chunked}");
        assert!(
            r.body == large_body(len),
            "{len} chunked={chunked}: body altered"
        );
        assert_eq!(r.get("x-app"), Some("yes"));
        // The connection stays usable: the answer's framing was right.
        app.set(Behaviour::Answer(200));
        assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_sent_by_the_sender_is_kept() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json().add("X-Request-Id", "trace-42");
    assert_eq!(sidecar.send(&d).await.status, 200);
    assert_eq!(app.requests()[0].all("x-request-id"), vec!["trace-42"]);
}

/// An app whose keep-alive ends right after each answer (Node's 5 s, PHP-FPM behind a short timeout):
/// the pooled connection is dead by the next delivery, and the sidecar must see it without sending on
/// it, on one thread (a current-thread runtime) as on several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_closing_its_idle_connections_costs_no_delivery_and_no_copy() {
    for threads in [1, 2] {
        let app = TestApp::start().await;
        app.set(Behaviour::Raw {
            answer: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
            close: true,
        });
        let sidecar = Sidecar::start(&app, &format!("[server]\nthreads = {threads}\n")).await;
        let mut conn = Conn::open(sidecar.addr).await;
        for i in 0..10 {
            let r = conn.send(&Delivery::json().bytes()).await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "ok\n"),
                "delivery {i}, threads = {threads}"
            );
        }
        let requests = app.requests();
        assert_eq!(
            requests.len(),
            10,
            "each delivery reached the app exactly once"
        );
        let ids: std::collections::HashSet<_> = requests
            .iter()
            .map(|r| r.get("x-pps-webhook-id").unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_but_valid_app_answers_are_relayed_and_garbage_is_502() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let cases: [(&str, &'static [u8], bool, u16, &str); 8] = [
        (
            "interim 100 Continue, then the answer",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            200,
            "ok",
        ),
        (
            "Connection: close",
            b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 3\r\n\r\nyes",
            true,
            202,
            "yes",
        ),
        (
            "HTTP/1.0, body until the connection closes",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
            true,
            200,
            "until close",
        ),
        (
            "chunked with extensions and trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
            200,
            "abcde",
        ),
        (
            "204 without a body",
            b"HTTP/1.1 204 No Content\r\nX-App: yes\r\n\r\n",
            false,
            204,
            "",
        ),
        (
            "not HTTP",
            b"SMTP ready\r\n\r\n",
            true,
            502,
            "bad gateway\n",
        ),
        (
            "a transfer coding the sidecar cannot undo",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            true,
            502,
            "bad gateway\n",
        ),
        (
            "body cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            true,
            502,
            "",
        ),
    ];
    for (what, answer, close, status, body) in cases {
        app.set(Behaviour::Raw { answer, close });
        let mut conn = Conn::open(sidecar.addr).await;
        let r = conn.send(&Delivery::json().bytes()).await;
        assert_eq!(r.status, status, "{what}");
        if status != 502 || !body.is_empty() {
            assert_eq!(r.text(), body, "{what}");
        }
        if status == 204 {
            assert_eq!(r.get("content-length"), None, "{what}");
            assert_eq!(r.get("x-app"), Some("yes"), "{what}");
        }
        // Whatever the app did, the next delivery is served normally.
        app.set(Behaviour::Answer(200));
        let r = Conn::open(sidecar.addr)
            .await
            .send(&Delivery::json().bytes())
            .await;
        assert_eq!(r.status, 200, "after {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_app_has_seen_is_never_sent_again_on_another_connection() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut conn = Conn::open(sidecar.addr).await;
    assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    // On the pooled connection the app acknowledges receipt with an interim answer, then dies: it has the
    // delivery, so retrying it elsewhere could process it twice.
    app.set(Behaviour::Raw {
        answer: b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        close: true,
    });
    let r = conn.send(&Delivery::json().bytes()).await;
    assert_eq!(r.status, 502);
    assert_eq!(app.count(), 2, "the second delivery reached the app once");
}
