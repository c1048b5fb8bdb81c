//! The trust boundary, round two: request targets, pass-through that cannot smuggle, the admin port's own
//! bounds, acknowledged events that stay acknowledged, shadow mode that changes nothing, and the smaller
//! header defects. Each against the real binary.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

const FORWARD: &str = "[webhooks]\nother_paths = \"forward\"\n";

/// An unsigned POST with `target` as its request target.
fn unsigned(target: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: sidecar.test\r\nX-Pps-Topic: orders/placed\r\n\
         X-Pps-Webhook-Id: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_target_but_origin_and_absolute_form_is_refused_on_every_other_paths_setting()
{
    let app = TestApp::start().await;
    for extra in ["", FORWARD] {
        let sidecar = Sidecar::start(&app, extra).await;
        for target in [
            "webhooks",
            "x:/webhooks",
            "%2Fwebhooks",
            "foo:/webhooks",
            "*",
            "sidecar.test:443",
            "http:/webhooks",
            "ftp://h/webhooks",
            "http://user@h/webhooks",
        ] {
            let answer = raw(sidecar.addr, &unsigned(target)).await;
            assert_eq!(status_of(&answer), Some(400), "{target} ({extra:?})");
        }
        let answer = raw(sidecar.addr, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(status_of(&answer), Some(400), "OPTIONS *");
    }
    assert_eq!(app.count(), 0, "no such target reached the app");
}

/// Paths that common app routers send to the webhook handler, though no canonical reading of the old
/// sidecar named a webhook path: a leading `//` read as an authority (Node's `new URL`, the JDK), a front
/// controller's `PATH_INFO`, string-prefix matching and format suffixes, a query or fragment separator
/// that only exists once decoded, and a character whose case folds to ASCII.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_an_app_router_reads_as_a_webhook_path_never_reaches_it_unverified() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    for target in [
        "//h/webhooks",
        "//webhooks",
        "/index.php/webhooks",
        "/app.php/WebHooks/orders",
        "/webhooksx",
        "/webhooks.json",
        "/webhooks.",
        "/webhooks%3Fx=1",
        "/webhooks%23frag",
        "/webhook%C5%BF",
        "/webhoo%E2%84%AAs",
    ] {
        let status = status_of(&raw(sidecar.addr, &unsigned(target)).await);
        assert!(matches!(status, Some(400 | 403)), "{target}: {status:?}");
    }
    assert_eq!(app.count(), 0, "none reached the app");
    // A signed delivery through a front controller is a delivery like any other.
    let mut d = Delivery::json();
    d.path = "/index.php/webhooks".into();
    assert_eq!(sidecar.send(&d).await.status, 200);
    assert_eq!(app.requests()[0].exact("X-Pps-Verified"), Some("hmac"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_delivery_is_verified_and_reaches_the_app_in_origin_form() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    let mut forged = Delivery::json().sign_with("not-the-secret");
    forged.path = "http://sidecar.test/webhooks".into();
    assert_eq!(sidecar.send(&forged).await.status, 403);
    // Pingora refuses a `Host` that differs from the target's authority (400): they agree here.
    let mut d = Delivery::json();
    d.path = "http://sidecar.test/webhooks/orders?x=1".into();
    assert_eq!(sidecar.send(&d).await.status, 200);
    let got = &app.requests()[0];
    assert_eq!(got.path, "/webhooks/orders?x=1");
    assert_eq!(got.all("Host"), ["sidecar.test"]);
    assert_eq!(got.exact("X-Pps-Verified"), Some("hmac"));
}

/// The shipped example app answers a POST it does not route (404) without reading the body, so on a
/// kept-alive connection it would read the body as its next request. Through the sidecar, an unsigned
/// pass-through request whose body is a whole `POST /webhooks ... X-Pps-Verified: hmac` request must
/// never make it process that inner request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_body_holding_a_request_is_never_read_by_the_app_as_one() {
    let [app_addr] = free_addrs();
    let dir = tempfile::tempdir().unwrap();
    let legacy = Proc::spawn(
        "legacy-app",
        std::process::Command::new("python3")
            .arg(repo_path("examples/legacy-app/app.py"))
            .env("APP_LISTEN", app_addr.to_string()),
        dir.path(),
    );
    legacy.output_with("listening on", 1).await;
    let sidecar = Sidecar::start_with(app_addr, FORWARD, &[]).await;

    let inner = "POST /webhooks HTTP/1.1\r\nHost: x\r\nX-Pps-Verified: hmac\r\n\
                 X-Pps-Topic: orders/placed\r\nX-Pps-Webhook-Id: smuggled-1\r\n\
                 Content-Length: 2\r\n\r\n{}";
    let outer = format!(
        "POST /other HTTP/1.1\r\nHost: sidecar.test\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let mut conn = Conn::open(sidecar.addr).await;
    for _ in 0..3 {
        let r = conn.send(outer.as_bytes()).await;
        assert_eq!(r.status, 404, "the app's own answer to /other");
    }
    // Deliveries after it, on connections the sidecar may reuse.
    for _ in 0..3 {
        let d = Delivery::json();
        assert_eq!(sidecar.send(&d).await.status, 200);
        legacy.output_with(&format!("id={}", d.id()), 1).await;
    }
    assert!(
        !legacy.output().contains("smuggled-1"),
        "the app processed a smuggled request:\n{}",
        legacy.output()
    );
}

/// Opens a connection to `to` from `from` (any 127.0.0.0/8 address is this host).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .ok()?;
    socket.connect(to).await.ok()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 300 connections to the admin port, from 20 peers, each sending a 1 MiB head without its end: the
/// review that found this grew the process from 19 to 216 MiB. Now each head is cut at the admin
/// listener's bound, the process stays far below a 128Mi pod limit, and probes still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_endless_heads_on_the_admin_port_leave_memory_bounded_and_probes_answered() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let before = rss_kib(sidecar.pid());
    let head_line = format!("GET /healthz HTTP/1.1\r\nX-Pad: {}", "a".repeat(1 << 20));
    let mut floods = Vec::new();
    for peer in 2..22u8 {
        for _ in 0..15 {
            let admin = sidecar.admin;
            let bytes = head_line.clone();
            floods.push(tokio::spawn(async move {
                let Some(mut s) = connect_from([127, 0, 0, peer], admin).await else {
                    return;
                };
                // The sidecar cuts the head short: the write fails or stops being taken.
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(bytes.as_bytes()))
                    .await;
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
            }));
        }
    }
    let mut peak = before;
    while floods.iter().any(|f| !f.is_finished()) {
        peak = peak.max(rss_kib(sidecar.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak = peak.max(rss_kib(sidecar.pid()));
    assert!(
        peak < before + 40 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    let ready = sidecar.admin_get("/healthz").await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_admin_connection_from_the_kubelet() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Some(s) = connect_from([127, 0, 0, 9], sidecar.admin).await {
            held.push(s);
        }
    }
    // Past its share, the peer's connections are closed as they are accepted.
    let mut closed = 0;
    for s in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 40 - 16, "only {closed} of 40 were closed");
    let mut probe = connect_from([127, 0, 0, 10], sidecar.admin).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(PATIENCE, probe.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&answer[..n]), Some(200));
}

/// 33 peers of 16 connections each could hold all 512 admin slots by sending a probe now and then on
/// kept-alive connections. The admin listener keeps no connection alive: each is closed once answered,
/// and the kubelet's next probe finds a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_from_many_peers_never_keep_the_kubelet_out() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut held = Vec::new();
    for peer in 1..=40u8 {
        for _ in 0..16 {
            if let Some(mut s) = connect_from([127, 0, 1, peer], sidecar.admin).await {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
                    .await;
                held.push(s);
            }
        }
    }
    let mut answered_and_closed = 0;
    for s in &mut held {
        let mut answer = Vec::new();
        if let Ok(Ok(_)) = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await {
            answered_and_closed += usize::from(status_of(&answer) == Some(200));
        }
    }
    assert!(
        answered_and_closed >= 500,
        "{answered_and_closed} answered and closed"
    );
    let mut probe = connect_from([127, 0, 0, 99], sidecar.admin).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, probe.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&answer), Some(200));
}

/// A pass-through body trickled a byte at a time held a connection to the app (and an app worker) with
/// no end: the whole body has `body_timeout`, as a delivery's has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_pass_through_body_is_cut_at_the_body_deadline() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        &format!("{FORWARD}[server]\nbody_timeout_ms = 1000\n"),
    )
    .await;
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = async {
        // Each byte well within the deadline of one read, the whole far past the body's.
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.peek(&mut [0u8; 1]).await.is_ok_and(|n| n > 0) {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(PATIENCE, trickle)
        .await
        .expect("cut in time");
    assert_eq!(status_of(&answer), Some(408));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_read_leniently_is_refused_not_dropped() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    for target in ["/orders", "/webhooks"] {
        let req = format!("POST {target} HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\nabcd");
        let answer = raw(sidecar.addr, req.as_bytes()).await;
        assert_eq!(status_of(&answer), Some(400), "{target}");
    }
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_at_past_year_9999_in_utc_goes_as_sent() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let late = "9999-12-31T23:59:59-23:59";
    let d = Delivery::json().set("X-Pps-Triggered-At", Some(late));
    assert_eq!(sidecar.send(&d).await.status, 200);
    let got = &app.requests()[0];
    assert_eq!(got.exact("X-Pps-Triggered-At"), Some(late));
    assert_eq!(got.get("X-Pps-Triggered-At-Original"), None);
}

/// A request sent before the previous one was answered (pipelining) used to wait unanswered until the
/// keep-alive timeout; both are answered in order now, deliveries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_answered_in_order() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    let (first, second) = (Delivery::json(), Delivery::json());
    let mut wire = first.bytes();
    wire.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n");
    wire.extend_from_slice(&second.bytes());
    wire.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&wire).await.unwrap();
    let mut answers = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut answers))
        .await
        .expect("every answer, then the close")
        .unwrap();
    let text = String::from_utf8_lossy(&answers);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 4, "{text}");
    let paths: Vec<String> = app.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/webhooks", "/health", "/webhooks", "/last"]);
    let ids: Vec<Option<String>> = app
        .requests()
        .iter()
        .map(|r| r.get("X-Pps-Webhook-Id").map(str::to_string))
        .collect();
    assert_eq!(ids[0].as_deref(), Some(first.id().as_str()));
    assert_eq!(ids[2].as_deref(), Some(second.id().as_str()));
}

/// The app answers 200 with 8 MB to a sender that does not read: the sender's relay budget runs out,
/// but the app's whole 2xx arrived, so the event is acknowledged and Pitchpoint's retry is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_reads_too_slowly_does_not_release_an_acknowledged_event() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nbody_timeout_ms = 1000\n").await;
    app.set(Behaviour::Large {
        len: 8 << 20,
        chunked: false,
    });
    let d = Delivery::json();
    let mut slow = TcpStream::connect(sidecar.addr).await.unwrap();
    slow.write_all(&d.bytes()).await.unwrap();
    let line = sidecar
        .log_with(&format!("webhook_id=\"{}\"", d.id()), 1)
        .await;
    assert!(
        line.contains("the sender did not take the app's answer in time"),
        "{line}"
    );
    app.set(Behaviour::Answer(200));
    let retry = sidecar.send(&d).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.get("X-Pps-Duplicate"), Some("true"));
    assert_eq!(app.count(), 1, "the event reached the app once");
    drop(slow);
}

/// In shadow mode a forgery with a genuine event's tenant and id is forwarded, but it can neither
/// acknowledge that event's dead-letter entry nor mark the event done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_shadow_mode_a_forgery_changes_nothing_a_verified_delivery_relies_on() {
    let app = TestApp::start().await;
    let spool = tempfile::tempdir().unwrap();
    let extra = format!(
        "[auth]\nenforce = false\n[spool]\ndir = \"{}\"\n",
        spool.path().display()
    );
    let sidecar = Sidecar::start(&app, &extra).await;
    let genuine = Delivery::json();
    app.set(Behaviour::Answer(404));
    assert_eq!(sidecar.send(&genuine).await.status, 404);
    let config = sidecar.dir.path().join("sidecar.toml");
    let spooled = || {
        run_cli(
            &["spool", "list", "--config", config.to_str().unwrap()],
            &[],
        )
        .1
    };
    assert!(spooled().contains(&genuine.id()), "the refusal is spooled");

    app.set(Behaviour::Answer(200));
    let forged = genuine.clone().sign_with("not-the-secret");
    assert_eq!(
        sidecar.send(&forged).await.status,
        200,
        "shadow mode forwards"
    );
    assert_eq!(app.requests()[1].exact("X-Pps-Verified"), Some("none"));
    assert!(
        spooled().contains(&genuine.id()),
        "the entry is still there"
    );

    let r = sidecar.send(&genuine).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.get("X-Pps-Duplicate"),
        None,
        "the forgery did not mark it done"
    );
    assert_eq!(app.count(), 3);
    eventually("the acknowledged event leaves the spool", || async {
        !spooled().contains(&genuine.id())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_at_sent_twice_differently_is_400_and_one_that_is_not_text_goes_as_sent() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let twice = Delivery::json().add("X-Pps-Triggered-At", "2024-02-02T00:00:00Z");
    assert_eq!(sidecar.send(&twice).await.status, 400);

    let d = Delivery::json().set("X-Pps-Triggered-At", Some("TRIGGERED"));
    let bytes = d.bytes();
    let at = bytes.windows(9).position(|w| w == b"TRIGGERED").unwrap();
    let mut bytes = bytes;
    bytes.splice(at..at + 9, b"2024-\xff".iter().copied());
    let r = send(sidecar.addr, &bytes).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.count(), 1);
    let got = app.requests();
    // The app's recorder reads values as text: the byte is there, replaced on display.
    assert_eq!(got[0].all("X-Pps-Triggered-At"), ["2024-\u{fffd}"]);
    assert!(got[0].get("X-Pps-Triggered-At-Original").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_app_in_any_spelling() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let sig = Delivery::json()
        .header("X-Pps-Hmac-Sha256")
        .unwrap()
        .to_string();
    let d = Delivery::json()
        .add("X_Pps_Hmac_Sha256", &sig)
        .add("x-pps_hmac-sha256", &sig)
        .add("Authorization", "Bearer not-a-token");
    assert_eq!(sidecar.send(&d).await.status, 200);
    let got = &app.requests()[0];
    for (name, value) in &got.headers {
        let n = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            n != "x-pps-hmac-sha256" && n != "authorization" && !value.contains(&sig),
            "{name}: {value}"
        );
    }
}

/// PHP registers `X.Pps.Jwt.Subject` as `HTTP_X_PPS_JWT_SUBJECT`, the variable of `X-Pps-Jwt-Subject`:
/// a trust header or a credential in a dotted spelling is the same header to such an app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_headers_in_a_dotted_spelling_never_reach_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    let sig = Delivery::json()
        .header("X-Pps-Hmac-Sha256")
        .unwrap()
        .to_string();
    let spoofed = [
        ("X.Pps.Jwt.Subject", "admin@pitchpoint"),
        ("X.Pps.Jwt.Issuer", "https://evil.example"),
        ("X.Pps.Replayed", "true"),
        ("X.Pps.Duplicate", "true"),
        ("X.Pps.Verified", "jwt"),
        ("X.Pps.Triggered.At.Original", "forged"),
        ("X.Pps.Hmac.Sha256", &sig),
    ];
    let mut d = Delivery::json();
    for (name, value) in spoofed {
        d = d.add(name, value);
    }
    assert_eq!(sidecar.send(&d).await.status, 200);
    let mut other = String::from("POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n");
    for (name, value) in spoofed {
        other.push_str(&format!("{name}: {value}\r\n"));
    }
    other.push_str("\r\n");
    assert_eq!(send(sidecar.addr, other.as_bytes()).await.status, 200);
    assert_eq!(app.count(), 2);
    for got in app.requests() {
        for (name, value) in &got.headers {
            let php = name.to_ascii_uppercase().replace(['-', '.'], "_");
            let sidecar_wrote = php == "X_PPS_VERIFIED"
                && ["hmac", "none"].contains(&value.as_str())
                || php == "X_PPS_TRIGGERED_AT_ORIGINAL" && value != "forged";
            // Pass-through keeps credentials: they are the app's own business on its other paths.
            let kept_credential = got.path == "/orders" && php == "X_PPS_HMAC_SHA256";
            assert!(
                !spoofed
                    .iter()
                    .any(|(n, _)| n.to_ascii_uppercase().replace('.', "_") == php)
                    || sidecar_wrote
                    || kept_credential,
                "{} {name}: {value}",
                got.path
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_request_id_outside_the_safe_set_is_replaced_as_on_deliveries() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, FORWARD).await;
    let req = b"GET /health HTTP/1.1\r\nHost: h\r\nX-Request-Id: x outcome=forged\r\n\r\n";
    assert_eq!(send(sidecar.addr, req).await.status, 200);
    let sent = app.requests()[0].get("X-Request-Id").unwrap().to_string();
    assert_ne!(sent, "x outcome=forged");
    let line = sidecar.log_with("path=\"/health\"", 1).await;
    assert!(line.contains(&format!("request_id=\"{sent}\"")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_debug_level_no_credential_reaches_the_log() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start_with(app.addr, FORWARD, &[("RUST_LOG", "trace")]).await;
    let d = Delivery::json().add("Authorization", "Bearer secret-bearer-token");
    let sig = d.header("X-Pps-Hmac-Sha256").unwrap().to_string();
    assert_eq!(sidecar.send(&d).await.status, 200);
    let forged = Delivery::json().sign_with("not-the-secret");
    let forged_sig = forged.header("X-Pps-Hmac-Sha256").unwrap().to_string();
    assert_eq!(sidecar.send(&forged).await.status, 403);
    let pass = format!(
        "POST /other HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer secret-bearer-token\r\n\
         X-Pps-Hmac-Sha256: {sig}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert_eq!(send(sidecar.addr, pass.as_bytes()).await.status, 200);
    // A head Pingora cannot parse: its error quotes the head.
    let bad = format!("POST /webhooks HTTP/1.1\r\nX-Pps-Hmac-Sha256: {sig}\r\nBad Header\r\n\r\n");
    let _ = raw(sidecar.addr, bad.as_bytes()).await;
    sidecar.log_with("path=\"/other\"", 1).await;
    let log = sidecar.log();
    for secret in [SECRET, "secret-bearer-token", &sig, &forged_sig] {
        assert!(!log.contains(secret), "the log holds a credential");
    }
}

/// A kept-alive connection may idle for `keepalive_timeout_ms`, but once its next head has started, that
/// head must be whole within `header_timeout_ms` of its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_started_on_a_kept_alive_connection_has_only_the_head_deadline() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[server]\nkeepalive_timeout_ms = 60000\nheader_timeout_ms = 1000\n",
    )
    .await;
    let mut conn = Conn::open(sidecar.addr).await;
    assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    conn.write(b"P").await;
    let started = std::time::Instant::now();
    assert!(conn.is_closed().await, "the stalled head is dropped");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed by the head deadline, not the keep-alive allowance"
    );
}
