//! The shared store under Redis faults: a stall (SIGSTOP) while copies are in flight, and a commit that
//! could not reach Redis. Each test fails on a store that falls back past its own claims.

use std::time::Duration;

use crate::common::*;

/// Longer than the Redis timeout (250 ms by default) several times over: a copy that fell back to the
/// local store would have reached the app by then.
const FALLBACK_SEEN: Duration = Duration::from_secs(1);

async fn no_more_than(app: &TestApp, n: usize) -> bool {
    tokio::time::timeout(FALLBACK_SEEN, app.wait_for(n + 1))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_while_redis_stalls_waits_for_the_copy_in_flight_on_its_replica() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let a = Sidecar::start(&app, &redis.toml()).await;
    let d = Delivery::json();
    app.set(Behaviour::Hold(200));
    let mut first = Conn::open(a.addr).await;
    first.write(&d.bytes()).await;
    app.wait_for(1).await;

    redis.pause();
    let mut second = Conn::open(a.addr).await;
    second.write(&d.bytes()).await;
    assert!(
        no_more_than(&app, 1).await,
        "a second copy reached the app while the first was in flight"
    );
    app.release();
    assert_eq!(first.read().await.unwrap().status, 200);
    let r = second.read().await.unwrap();
    assert_eq!(
        (r.status, r.get("x-pps-duplicate")),
        (200, Some("true")),
        "the waiting copy shares the first one's 2xx"
    );
    redis.resume();
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_waiting_on_another_replicas_claim_is_refused_when_redis_fails_meanwhile() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let a = Sidecar::start(&app, &redis.toml()).await;
    let b = Sidecar::start(&app, &redis.toml()).await;
    let d = Delivery::json();
    app.set(Behaviour::Hold(200));
    let mut first = Conn::open(a.addr).await;
    first.write(&d.bytes()).await;
    app.wait_for(1).await;

    let mut second = Conn::open(b.addr).await;
    second.write(&d.bytes()).await;
    // B polls the key A holds: Redis serves its reads.
    let polls = redis.calls("get").await;
    eventually("B polls A's claim", || async {
        redis.calls("get").await >= polls + 2
    })
    .await;
    redis.pause();
    let r = second.read().await.expect("answered");
    assert_eq!(
        r.status, 503,
        "an unreadable claim is never taken as absent"
    );
    assert!(no_more_than(&app, 1).await);
    redis.resume();
    app.release();
    assert_eq!(first.read().await.unwrap().status, 200);
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_made_while_redis_is_paused_is_replayed_when_it_is_back() {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let a = Sidecar::start(&app, &redis.toml()).await;
    let b = Sidecar::start(&app, &redis.toml()).await;
    let d = Delivery::json();

    redis.pause();
    assert_eq!(a.send(&d).await.status, 200, "forwarded without Redis");
    // The commit follows the answer's relay, and gives up after the Redis timeout.
    eventually("the commit waits for Redis", || async {
        let m = a.admin_get("/metrics").await.text();
        metric(&m, "pps_sidecar_dedup_commits_pending") == 1.0
    })
    .await;
    redis.resume();

    eventually("the commit is replayed", || async {
        let m = a.admin_get("/metrics").await.text();
        metric(
            &m,
            "pps_sidecar_dedup_commit_replays_total{result=\"success\"}",
        ) == 1.0
            && metric(&m, "pps_sidecar_dedup_commits_pending") == 0.0
    })
    .await;
    let r = b.send(&d).await;
    assert_eq!(
        r.get("x-pps-duplicate"),
        Some("true"),
        "the other replica knows the event is done"
    );
    assert_eq!(app.count(), 1);
    let m = a.admin_get("/metrics").await.text();
    assert_eq!(metric(&m, "pps_sidecar_dedup_commits_dropped_total"), 0.0);
}
