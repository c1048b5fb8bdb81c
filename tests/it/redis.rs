//! Shared deduplication: two sidecar processes in front of one app, sharing a real `redis-server`.

use crate::common::*;

async fn replicas(app: &TestApp, redis: &TestRedis) -> (Sidecar, Sidecar) {
    (
        Sidecar::start(app, &redis.toml()).await,
        Sidecar::start(app, &redis.toml()).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_sent_to_the_other_replica_is_answered_from_the_shared_cache() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let (a, b) = replicas(&app, &redis).await;
    let d = Delivery::json();
    assert_eq!(a.send(&d).await.status, 200);
    let r = b.send(&d).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("x-pps-duplicate"), Some("true"));
    assert_eq!(app.count(), 1);
    let ready = b.admin_get("/readyz").await;
    assert!(ready.text().contains("dedup: redis ok"), "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_copies_spread_over_both_replicas_reach_the_app_once() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let (a, b) = replicas(&app, &redis).await;
    app.set(Behaviour::Hold(200));
    let conns = send_copies(&[a.addr, b.addr], &Delivery::json(), 10).await;
    app.wait_for(1).await;
    app.release();
    let mut fresh = 0;
    for mut c in conns {
        let r = c.read().await.expect("answered");
        assert_eq!(
            r.status, 200,
            "the app acknowledged, so copies share its 2xx"
        );
        if r.get("x-pps-duplicate").is_none() {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(app.count(), 1, "exactly one copy reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_failure_on_one_replica_lets_the_retry_through_on_the_other() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let (a, b) = replicas(&app, &redis).await;
    let d = Delivery::json();
    app.set(Behaviour::Answer(503));
    assert_eq!(a.send(&d).await.status, 503);
    app.set(Behaviour::Answer(200));
    let r = b.send(&d).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("x-pps-duplicate"), None);
    assert_eq!(app.count(), 2);
    let again = a.send(&d).await;
    assert_eq!(
        again.get("x-pps-duplicate"),
        Some("true"),
        "now done for both"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_flow_while_redis_is_down_and_sharing_resumes_when_it_is_back() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let (a, b) = replicas(&app, &redis).await;
    assert_eq!(a.send(&Delivery::json()).await.status, 200);

    let port = redis.stop();
    let during = Delivery::json();
    assert_eq!(a.send(&during).await.status, 200, "forwarded without Redis");
    assert_eq!(
        a.send(&during).await.get("x-pps-duplicate"),
        Some("true"),
        "the local cache still answers this replica's duplicates"
    );
    let ready = a.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "deliveries flow, so the pod stays ready");
    assert!(
        ready.text().contains("redis unreachable"),
        "{}",
        ready.text()
    );
    let m = a.admin_get("/metrics").await.text();
    assert!(
        metric(&m, "pps_sidecar_dedup_store_errors_total") >= 1.0,
        "{m}"
    );
    a.log_with("using this replica's local cache", 1).await;

    let _redis = TestRedis::start(port).await;
    // Redis is retried a second after a failure; wait until a replica shares again.
    eventually("sharing resumes", || async {
        let d = Delivery::json();
        assert_eq!(a.send(&d).await.status, 200);
        b.send(&d).await.get("x-pps-duplicate") == Some("true")
    })
    .await;
    a.log_with("shared deduplication resumes", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_namespaced_by_the_configured_prefix() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let a = Sidecar::start(&app, &redis.toml().replace("test-app:", "app-a:")).await;
    let b = Sidecar::start(&app, &redis.toml().replace("test-app:", "app-b:")).await;
    let d = Delivery::json();
    assert_eq!(a.send(&d).await.status, 200);
    let r = b.send(&d).await;
    assert_eq!(r.get("x-pps-duplicate"), None, "another app's namespace");
    assert_eq!(app.count(), 2);
}
