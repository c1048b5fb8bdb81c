//! Deduplication and app failures: the sender never gets a 2xx for an event the app did not acknowledge.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_after_success_is_answered_from_cache_without_the_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    app.set(Behaviour::Answer(202));
    let d = Delivery::json();
    let first = sidecar.send(&d).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.get("x-pps-duplicate"), None);

    let again = sidecar.send(&d).await;
    assert_eq!(again.status, 202, "the remembered 2xx status");
    assert_eq!(again.get("x-pps-duplicate"), Some("true"));

    let upper = d
        .clone()
        .set("X-Pps-Webhook-Id", Some(&d.id().to_uppercase()));
    let r = sidecar.send(&upper).await;
    assert_eq!(
        r.get("x-pps-duplicate"),
        Some("true"),
        "UUIDs compare case-insensitively"
    );
    assert_eq!(app.count(), 1, "the app saw the event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_webhook_id_from_another_tenant_is_a_different_event() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 200);
    let other = d.clone().set("X-Pps-Tenant-Id", Some("OU7777"));
    let r = sidecar.send(&other).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_errors_are_relayed_and_never_cached_so_the_retry_goes_through() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    for status in [500u16, 503, 422, 404, 302] {
        let d = Delivery::json();
        app.set(Behaviour::Answer(status));
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, status, "the app's own status is relayed");
        assert_eq!(r.text(), format!("app says {status}\n"));

        app.set(Behaviour::Answer(200));
        let before = app.count();
        let retry = sidecar.send(&d).await;
        assert_eq!(retry.status, 200, "after {status}");
        assert_eq!(retry.get("x-pps-duplicate"), None, "after {status}");
        assert_eq!(
            app.count(),
            before + 1,
            "the retry after {status} reached the app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_finishes_its_answer_gets_504_before_the_claim_could_expire() {
    // Each read gets a byte well within read_timeout_ms, so only the bound on the whole exchange
    // (connect + 2 x read = 700 ms here) ends it; the claim lives 10 s longer than that.
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[upstream]\nconnect_timeout_ms = 100\nread_timeout_ms = 300\n",
    )
    .await;
    let d = Delivery::json();
    app.set(Behaviour::Drip);
    assert_eq!(sidecar.send(&d).await.status, 504);

    app.set(Behaviour::Answer(200));
    let retry = sidecar.send(&d).await;
    assert_eq!(retry.status, 200, "the claim was released");
    assert_eq!(retry.get("x-pps-duplicate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_timeout_is_504_and_the_retry_goes_through() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    app.set(Behaviour::Hang);
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 504, "no answer within read_timeout_ms");

    app.set(Behaviour::Answer(200));
    let retry = sidecar.send(&d).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.get("x-pps-duplicate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_closing_without_answer_is_502_and_the_retry_goes_through() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    app.set(Behaviour::Close);
    assert_eq!(sidecar.send(&d).await.status, 502);
    app.set(Behaviour::Answer(200));
    let retry = sidecar.send(&d).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.get("x-pps-duplicate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_is_502_not_ready_and_the_retry_goes_through_once_it_is_up() {
    let [app_addr] = free_addrs();
    let sidecar = Sidecar::start_with(app_addr, "", &[]).await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 502, "connection refused");
    let ready = sidecar.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("app: not accepting connections"),
        "{}",
        ready.text()
    );

    let app = TestApp::start_on(app_addr).await;
    assert_eq!(sidecar.admin_get("/readyz").await.status, 200);
    let retry = sidecar.send(&d).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_copies_reach_the_app_exactly_once_and_share_its_2xx() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    app.set(Behaviour::Hold(200));
    let conns = send_copies(&[sidecar.addr], &Delivery::json(), 12).await;
    app.wait_for(1).await;
    app.release();
    let mut statuses = Vec::new();
    for mut c in conns {
        let r = c.read().await.expect("every copy is answered");
        statuses.push((r.status, r.get("x-pps-duplicate").is_some()));
    }
    assert_eq!(app.count(), 1, "exactly one copy reached the app");
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|(_, dup)| !*dup).count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_copies_never_get_a_2xx_when_the_app_fails() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    app.set(Behaviour::Hold(500));
    let conns = send_copies(&[sidecar.addr], &Delivery::json(), 12).await;
    app.wait_for(1).await;
    app.release();
    for mut c in conns {
        let r = c.read().await.expect("every copy is answered");
        assert!(
            r.status >= 500,
            "a copy got {} for an event the app failed",
            r.status
        );
        if r.status == 503 && r.get("x-app").is_none() {
            assert!(
                r.get("retry-after").is_some(),
                "503 while in flight says when to retry"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_disabled_forwards_every_copy() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[dedup]\nenabled = false\n").await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 200);
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 2);
}

/// The same webhook id with another body: still a duplicate (never a second trip to the app), and seen by
/// operators: a warning and `pps_sidecar_dedup_body_mismatch_total`. Against both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_with_another_body_is_answered_as_a_duplicate_and_counted() {
    let redis = TestRedis::start(free_port()).await;
    for store in [String::new(), redis.toml()] {
        let app = TestApp::start().await;
        let sidecar = Sidecar::start(&app, &store).await;
        let first = Delivery::json();
        assert_eq!(sidecar.send(&first).await.status, 200);
        let same = sidecar.send(&first).await;
        assert_eq!(same.get("x-pps-duplicate"), Some("true"));
        let other = Delivery::new(r#"{"order":{"id":6666,"total":"0.01"}}"#)
            .set("X-Pps-Webhook-Id", Some(&first.id()));
        let r = sidecar.send(&other).await;
        assert_eq!((r.status, r.get("x-pps-duplicate")), (200, Some("true")));
        assert_eq!(app.count(), 1, "{store}");
        let m = sidecar.metrics().await;
        assert_eq!(
            metric(&m, "pps_sidecar_dedup_body_mismatch_total"),
            1.0,
            "{store}"
        );
        let line = sidecar.log_with("another body", 1).await;
        assert!(line.contains("answered as a duplicate"), "{line}");
    }
}

/// HMAC covers the body only: one captured delivery replayed under fresh ids reaches the app each time,
/// unless `auth.hmac.replay_guard` refuses a body already acknowledged under another id (`403`,
/// `replayed_body`). Against both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_guard_refuses_an_acknowledged_body_under_a_fresh_id() {
    let redis = TestRedis::start(free_port()).await;
    let body = r#"{"order":{"id":4242,"total":"99.00"}}"#;
    let app = TestApp::start().await;
    let off = Sidecar::start(&app, "").await;
    assert_eq!(off.send(&Delivery::new(body)).await.status, 200);
    assert_eq!(off.send(&Delivery::new(body)).await.status, 200);
    assert_eq!(
        app.count(),
        2,
        "off by default: a replay under a fresh id is a new event"
    );
    for store in [String::new(), redis.toml()] {
        let app = TestApp::start().await;
        let guard = format!("[auth.hmac]\nreplay_guard = true\n{store}");
        let sidecar = Sidecar::start(&app, &guard).await;
        let genuine = Delivery::new(body);
        assert_eq!(sidecar.send(&genuine).await.status, 200);
        let replay = Delivery::new(body);
        assert_eq!(sidecar.send(&replay).await.status, 403, "{store}");
        assert_eq!(
            sidecar.send(&genuine).await.get("x-pps-duplicate"),
            Some("true"),
            "the genuine id is still a duplicate"
        );
        assert_eq!(app.count(), 1, "{store}");
        let m = sidecar.metrics().await;
        assert_eq!(
            metric(
                &m,
                "pps_sidecar_auth_failures_total{reason=\"replayed_body\"}"
            ),
            1.0
        );
    }
}
