//! The app's own probes through the admin listener (`/app-probe/<container>/<kind>`), with a real app that
//! listens on loopback only, as it does once `pps-sidecar inject` has put the sidecar in front of it: the
//! recorded probes reach the app's probe path and relay its status; nothing else of the app can be reached
//! through the admin port, which every pod of the cluster can talk to.

use crate::common::*;

/// The sidecar with `PPS_SIDECAR_APP_PROBES` as `inject` writes it, for an app at `app`.
async fn sidecar_with_probes(app: &TestApp, probes: &str) -> Sidecar {
    Sidecar::start_with(app.addr, "", &[("PPS_SIDECAR_APP_PROBES", probes)]).await
}

fn probes_for(port: u16, dead_port: u16) -> String {
    serde_json::json!({
        "/app-probe/app/liveness": {
            "httpGet": {"path": "/healthz?full=1", "port": port, "scheme": "HTTP",
                        "httpHeaders": [{"name": "Host", "value": "orders.internal"}]},
            "timeoutSeconds": 1
        },
        "/app-probe/app/readiness": {"tcpSocket": {"port": port}},
        "/app-probe/worker/liveness": {"tcpSocket": {"port": dead_port}, "timeoutSeconds": 1},
    })
    .to_string()
}

/// `METHOD path` on the admin listener, with `body` (and its length) if any.
async fn admin_request(s: &Sidecar, method: &str, path: &str, body: &[u8]) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    send(s.admin, &req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_http_probe_reaches_the_loopback_app_and_relays_its_status() {
    let app = TestApp::start().await;
    assert!(
        app.addr.ip().is_loopback(),
        "the app listens on loopback only"
    );
    let [dead] = free_ports();
    let sidecar = sidecar_with_probes(&app, &probes_for(app.addr.port(), dead)).await;

    // A query of the kubelet's request is not passed on: the app gets the recorded path exactly.
    let r = admin_request(&sidecar, "GET", "/app-probe/app/liveness?x=/webhooks", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = app.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "GET");
    assert_eq!(got[0].path, "/healthz?full=1");
    assert_eq!(got[0].get("Host"), Some("orders.internal"));
    assert!(got[0].body.is_empty());

    // The app's failure is the kubelet's failure.
    app.set(Behaviour::Answer(500));
    let r = admin_request(&sidecar, "GET", "/app-probe/app/liveness", b"").await;
    assert_eq!(r.status, 500, "{}", r.text());
    app.set(Behaviour::Answer(302));
    let r = admin_request(&sidecar, "GET", "/app-probe/app/liveness", b"").await;
    assert_eq!(
        r.status,
        200,
        "a 3xx is healthy to the kubelet: {}",
        r.text()
    );

    // An app that does not answer within timeoutSeconds: 503, and the admin listener is not held.
    app.set(Behaviour::Hang);
    let r = admin_request(&sidecar, "GET", "/app-probe/app/liveness", b"").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("timed out"), "{}", r.text());
    assert_eq!(sidecar.admin_get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_tcp_probe_connects_to_the_loopback_port() {
    let app = TestApp::start().await;
    let [dead] = free_ports();
    let sidecar = sidecar_with_probes(&app, &probes_for(app.addr.port(), dead)).await;
    let r = admin_request(&sidecar, "GET", "/app-probe/app/readiness", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_request(&sidecar, "GET", "/app-probe/worker/liveness", b"").await;
    assert_eq!(r.status, 503, "{}", r.text());
    // A TCP probe sends no request.
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_reaches_no_app_path_but_the_recorded_probes() {
    let app = TestApp::start().await;
    let [dead] = free_ports();
    let sidecar = sidecar_with_probes(&app, &probes_for(app.addr.port(), dead)).await;
    let delivery = Delivery::json();
    for (method, path, body) in [
        // Not injected: a kind, a container, the webhook path, other app paths.
        ("GET", "/app-probe/app/startup", &b""[..]),
        ("GET", "/app-probe/other/liveness", b""),
        ("GET", "/app-probe/app/liveness/../../webhooks", b""),
        ("GET", "/app-probe/app/liveness/", b""),
        ("GET", "/app-probe/app%2Fliveness", b""),
        ("GET", "/app-probe/", b""),
        ("GET", "/webhooks", b""),
        ("GET", "/orders", b""),
        ("POST", "/webhooks", &delivery.body),
        // A recorded probe, with another method or a body for the app's webhook handler.
        ("POST", "/app-probe/app/liveness", &delivery.body),
        ("PUT", "/app-probe/app/liveness", b""),
        ("DELETE", "/app-probe/app/readiness", b""),
    ] {
        let r = admin_request(&sidecar, method, path, body).await;
        assert!(
            [404, 405].contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(app.count(), 0, "the app was reached: {:?}", app.requests());

    // Without PPS_SIDECAR_APP_PROBES (a pod whose probes were not rewritten) there is no probe at all.
    let plain = Sidecar::start(&app, "").await;
    let r = admin_request(&plain, "GET", "/app-probe/app/liveness", b"").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_probe_record_is_reported_and_answers_503() {
    let app = TestApp::start().await;
    let sidecar = sidecar_with_probes(&app, r#"{"/webhooks": {"tcpSocket": {"port": 1}}}"#).await;
    let r = admin_request(&sidecar, "GET", "/app-probe/app/liveness", b"").await;
    assert_eq!(r.status, 503, "{}", r.text());
    sidecar
        .log_with("PPS_SIDECAR_APP_PROBES is not valid", 1)
        .await;
    let r = admin_request(&sidecar, "GET", "/webhooks", b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(app.count(), 0);
}
