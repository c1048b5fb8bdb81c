//! An app's own mistakes: with `upstream.app_4xx = "retry"` a 4xx the app answers by mistake does not make
//! Pitchpoint drop the event for good; nor, in either mode, a 408 for a request the app never took.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_an_app_404_becomes_503_and_pitchpoints_retry_reaches_the_fixed_app() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[upstream]\napp_4xx = \"retry\"\n").await;
    app.set(Behaviour::Answer(404));
    let d = Delivery::json();
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 503, "Pitchpoint retries a 5xx");
    assert!(r.get("retry-after").is_some());
    app.set(Behaviour::Answer(200));
    let r = sidecar.send(&d).await;
    assert_eq!(
        r.status, 200,
        "the retry is not a duplicate: the 404 released the claim"
    );
    assert_eq!(r.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 2);
    one_deferred_app_4xx(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_and_listed_final_statuses_are_relayed_even_in_retry_mode() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[upstream]\napp_4xx = \"retry\"\napp_4xx_final = [422]\n",
    )
    .await;
    for status in [403u16, 422] {
        app.set(Behaviour::Answer(status));
        assert_eq!(sidecar.send(&Delivery::json()).await.status, status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_app_4xx_is_relayed_as_it_is() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    app.set(Behaviour::Answer(404));
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 404);
}

/// An app's `408` says it did not take the request (most often: an idle connection it timed out as the
/// delivery went out on it). Relayed, it is a 4xx that makes Pitchpoint drop an event the app never had:
/// it is deferred in either mode, and still counted as the app's 4xx; relayed only when listed final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_408_is_deferred_in_either_mode_and_relayed_only_when_listed_final() {
    let timed_out: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let app = TestApp::start().await;
    app.set(Behaviour::Raw {
        answer: timed_out,
        close: true,
    });
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 503, "Pitchpoint retries a 5xx");
    assert!(r.get("retry-after").is_some());
    app.set(Behaviour::Answer(200));
    let retried = sidecar.send(&d).await;
    assert_eq!(retried.status, 200);
    assert_eq!(
        retried.get("x-pps-duplicate"),
        None,
        "the retry reached the app"
    );
    assert_eq!(app.count(), 2);
    one_deferred_app_4xx(&sidecar).await;

    let final_app = TestApp::start().await;
    final_app.set(Behaviour::Raw {
        answer: timed_out,
        close: true,
    });
    let sidecar = Sidecar::start(&final_app, "[upstream]\napp_4xx_final = [408]\n").await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 408);
}

/// One delivery deferred, counted as the app's 4xx.
async fn one_deferred_app_4xx(sidecar: &Sidecar) {
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "pps_sidecar_requests_total{outcome=\"deferred\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "pps_sidecar_app_responses_total{class=\"4xx\"}"),
        1.0
    );
}
