//! Redis behind Sentinel: two sidecar replicas find the master (which needs a password, from a file)
//! through two real `redis-sentinel`s, and
//! follow a failover (`SENTINEL FAILOVER`) in the middle of a stream of deliveries, each sent twice at
//! once through both replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const EVENTS: usize = 150;
/// The failover starts once this many events were sent.
const FAILOVER_AFTER: usize = 20;
/// Events start no faster than one per this: the failover lands mid-stream.
const PACE: Duration = Duration::from_millis(40);
/// The documented window: from the failover until both sidecar replicas follow the sentinels (they ask
/// every 250 ms), while a write the old master takes is lost. A copy of an event whose flow overlapped it
/// may reach the app twice.
const FOLLOW: Duration = Duration::from_millis(1000);

/// Sends `d` to `s` until it is answered with anything but 503 (each 503 is a Retry-After: the store
/// could not decide); the poll's deadline bounds it.
async fn until_decided(s: &Sidecar, d: &Delivery) -> Resp {
    poll("a copy is answered with anything but 503", || async {
        let r = s.send(d).await;
        (r.status != 503).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_sentinel_failover_deliveries_keep_flowing_and_reach_the_app_twice_only_inside_the_failover_window()
 {
    failover(TestSentinels::start().await, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sentinels_and_the_master_are_checked_and_a_failover_is_followed() {
    // The sentinels' certificate names 127.0.0.1 (the address they are asked at, and that they give for
    // the master); the test CA is the only one trusted.
    let ca = TestCa::with_names("DNS:redis.test,IP:127.0.0.1");
    let sentinels = TestSentinels::start_tls(&ca).await;
    // Without the CA (the system roots), no sentinel is trusted: nothing goes through.
    let app = TestApp::start().await;
    let untrusted = Sidecar::start(
        &app,
        &format!(
            "[dedup]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"test-app:\"\non_store_error = \"refuse\"\n",
            sentinels.url()
        ),
    )
    .await;
    assert_eq!(untrusted.send(&Delivery::json()).await.status, 503);
    assert_eq!(app.count(), 0);
    drop(untrusted);
    let tls = format!("redis_ca_file = \"{}\"\n", ca.ca_cert.display());
    failover(sentinels, &tls).await;
}

/// Streams events through two replicas configured with `extra` [dedup] lines, fails over mid-stream,
/// and checks the ledger. The first connection through Sentinel asks a sentinel, checks the master's
/// `ROLE` and connects to it (over TLS, a debug build loads the system roots each time): 1 s rather
/// than the default 250 ms, so that a loaded machine does not fail the first delivery.
async fn failover(sentinels: TestSentinels, extra: &str) {
    let app = TestApp::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let password = write_file(secrets.path(), "redis-password", REDIS_PASSWORD);
    let conf = format!(
        "[dedup]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"test-app:\"\n\
         on_store_error = \"refuse\"\nredis_password = {{ file = \"{}\" }}\nredis_timeout_ms = 1000\n{extra}",
        sentinels.url(),
        password.display()
    );
    let a = Arc::new(Sidecar::start(&app, &conf).await);
    let b = Arc::new(Sidecar::start(&app, &conf).await);
    assert_eq!(a.send(&Delivery::json()).await.status, 200);
    assert_eq!(
        sentinels.master.keys().await.len(),
        1,
        "the master holds it"
    );

    let sent = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (a, b, sent) = (a.clone(), b.clone(), sent.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut flows = Vec::new();
            for i in 0..EVENTS {
                tokio::time::sleep_until((start + PACE * i as u32).into()).await;
                let d = Delivery::new(format!("{{\"event\":{i}}}"));
                let (a, b) = (a.clone(), b.clone());
                flows.push(tokio::spawn(async move {
                    let began = Instant::now();
                    // Both copies at once, then a late one: a commit lost in the failover would let
                    // the late copy through.
                    let (ra, rb) = tokio::join!(until_decided(&a, &d), until_decided(&b, &d));
                    let late = until_decided(&b, &d).await;
                    (
                        d.id(),
                        [ra.status, rb.status, late.status],
                        (began, Instant::now()),
                    )
                }));
                sent.fetch_add(1, Ordering::SeqCst);
            }
            let mut out = Vec::new();
            for f in flows {
                out.push(f.await.unwrap());
            }
            out
        })
    };
    poll("the stream is under way", || async {
        (sent.load(Ordering::SeqCst) >= FAILOVER_AFTER).then_some(())
    })
    .await;
    let failover = Instant::now();
    sentinels.failover();
    let promoted = sentinels.replica_port;
    poll("both sentinels name the promoted replica", || async {
        (sentinels.master_port(0) == promoted && sentinels.master_port(1) == promoted).then_some(())
    })
    .await;
    let window = (failover, Instant::now() + FOLLOW);
    let ended = stream.await.unwrap();

    for (id, statuses, _) in &ended {
        assert_eq!(
            statuses,
            &[200, 200, 200],
            "event {id} ended with {statuses:?}"
        );
    }
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for r in app.requests() {
        *arrivals
            .entry(r.get("x-pps-webhook-id").unwrap().to_string())
            .or_default() += 1;
    }
    let (mut in_window, mut outside) = (0, Vec::new());
    for (id, _, (began, done)) in &ended {
        match arrivals.get(id) {
            Some(1) => {}
            Some(2) if *began <= window.1 && *done >= window.0 => in_window += 1,
            n => outside.push((id, n)),
        }
    }
    eprintln!(
        "sentinel failover: {} events, {in_window} reached the app twice inside the failover window",
        ended.len()
    );
    assert!(
        outside.is_empty(),
        "events that did not reach the app exactly once, outside the failover window: {outside:?}"
    );
    // The events that began once both replicas had followed were decided by the promoted replica.
    let mut after = 0;
    for (id, _, (began, _)) in &ended {
        if *began > window.1 {
            after += 1;
            let done = sentinels
                .replica
                .get(&format!("test-app:OU1243\n{id}"))
                .await;
            assert!(
                done.as_deref().is_some_and(|v| v.starts_with("d:200:")),
                "event {id}, sent after the failover, is not done in the new master: {done:?}"
            );
        }
    }
    assert!(after > 0, "no event was sent after the failover window");
    for s in [&a, &b] {
        let ready = s.admin_get("/readyz").await;
        assert!(ready.text().contains("dedup: redis ok"), "{}", ready.text());
    }
}
