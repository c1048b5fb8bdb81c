//! Operating the sidecar: metrics, hot reload, graceful drain, shadow mode, JSON access log.

use std::path::Path;

use crate::common::*;

fn signal(sidecar: &Sidecar, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &sidecar.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counters_move_by_exactly_one_per_outcome() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[webhooks]\nmax_body_bytes = 1000\n").await;
    let outcomes = [
        "forwarded",
        "duplicate",
        "unauthorized",
        "too_large",
        "method_not_allowed",
        "upstream_error",
        "bad_request",
        "filtered",
        "not_found",
    ];
    let series = |o: &str| format!("pps_sidecar_requests_total{{outcome=\"{o}\"}}");
    let before = sidecar.metrics().await;

    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 200);
    assert_eq!(sidecar.send(&d).await.status, 200);
    assert_eq!(
        sidecar.send(&Delivery::json().sign_with("x")).await.status,
        403
    );
    assert_eq!(
        sidecar.send(&Delivery::new(vec![b'x'; 1001])).await.status,
        413
    );
    let mut get = Delivery::json();
    get.method = "GET".into();
    assert_eq!(sidecar.send(&get).await.status, 405);
    app.set(Behaviour::Answer(500));
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 500);

    // Counted just after each answer is written: wait for the last one, then compare them all.
    let moved = |text: &str, o: &str| metric(text, &series(o)) - metric(&before, &series(o));
    eventually("the last request is counted", || async {
        moved(&sidecar.metrics().await, "upstream_error") >= 1.0
    })
    .await;
    let after = sidecar.metrics().await;
    for o in outcomes {
        let expected = if ["bad_request", "filtered", "not_found"].contains(&o) {
            0.0
        } else {
            1.0
        };
        assert_eq!(moved(&after, o), expected, "{o}");
    }
    assert_eq!(
        metric(
            &after,
            "pps_sidecar_auth_failures_total{reason=\"bad_signature\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "pps_sidecar_upstream_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "pps_sidecar_upstream_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        2.0
    );
    assert!(metric(&after, "pps_sidecar_dedup_entries") >= 0.0);
    metric(
        &after,
        "pps_sidecar_config_reloads_total{result=\"success\"}",
    );
    metric(&after, "pps_sidecar_jwks_refresh_total{result=\"failure\"}");
}

/// Lays out `dir` as Kubernetes mounts a Secret: `key -> ..data/key`, `..data -> ..<version>`.
fn k8s_secret(dir: &Path, version: &str, key: &str, value: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join(key), format!("{value}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(key);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotated_by_a_kubernetes_symlink_swap_works_without_a_signal() {
    let app = TestApp::start().await;
    let secrets = tempfile::tempdir().unwrap();
    k8s_secret(secrets.path(), "2026_11_01", "hmac", "first-secret");
    let extra = format!(
        "[auth.hmac]\nsecrets = [{{ file = \"{}\" }}]\n",
        secrets.path().join("hmac").display()
    );
    let sidecar = Sidecar::start(&app, &extra).await;
    assert_eq!(
        sidecar
            .send(&Delivery::json().sign_with("first-secret"))
            .await
            .status,
        200
    );

    k8s_secret(secrets.path(), "2026_11_02", "hmac", "second-secret");
    eventually("the new secret verifies", || async {
        sidecar
            .send(&Delivery::json().sign_with("second-secret"))
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(
        sidecar
            .send(&Delivery::json().sign_with("first-secret"))
            .await
            .status,
        403,
        "the replaced secret no longer verifies"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "pps_sidecar_config_reloads_total{result=\"success\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_the_dedup_cache() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 200);

    let path = sidecar.dir.path().join("sidecar.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str("\n[filters]\ntenants = [\"OU1243\"]\n");
    // Written in place, then signalled: the signal alone must be enough even if the watcher is slower.
    std::fs::write(&path, toml).unwrap();
    signal(&sidecar, "HUP");
    eventually("the reload is counted", || async {
        metric(
            &sidecar.metrics().await,
            "pps_sidecar_config_reloads_total{result=\"success\"}",
        ) >= 1.0
    })
    .await;
    let other = Delivery::json().set("X-Pps-Tenant-Id", Some("OU0001"));
    assert_eq!(
        sidecar.send(&other).await.status,
        403,
        "the new filter is in force"
    );
    let again = sidecar.send(&d).await;
    assert_eq!(
        again.get("x-pps-duplicate"),
        Some("true"),
        "the cache survived"
    );
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_is_refused_counted_and_the_old_one_keeps_serving() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let path = sidecar.dir.path().join("sidecar.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[dedup]\nttl_secondz = 5\n")).unwrap();
    signal(&sidecar, "HUP");
    eventually("the failed reload is counted", || async {
        metric(
            &sidecar.metrics().await,
            "pps_sidecar_config_reloads_total{result=\"failure\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    assert!(
        sidecar.log().contains("ttl_secondz"),
        "the log names the bad key"
    );
}

/// On one thread (Pingora's current-thread runtime) as on several (its work-stealing one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_delivery_in_flight_finish_then_exits_0_on_one_thread_or_several() {
    for threads in [1, 2] {
        let app = TestApp::start().await;
        let extra = format!("[server]\nshutdown_delay_ms = 0\nthreads = {threads}\n");
        let sidecar = Sidecar::start(&app, &extra).await;
        app.set(Behaviour::Hold(200));
        let d = Delivery::json();
        let mut conn = Conn::open(sidecar.addr).await;
        conn.write(&d.bytes()).await;
        app.wait_for(1).await;

        signal(&sidecar, "TERM");
        eventually("the listener closes", || async {
            tokio::net::TcpStream::connect(sidecar.addr).await.is_err()
        })
        .await;
        app.release();
        let r = conn
            .read()
            .await
            .expect("the delivery in flight is answered");
        assert_eq!(r.status, 200, "threads = {threads}");
        assert_eq!(r.text(), "app says 200\n");

        let status = poll("the sidecar exits", || async { sidecar.exited() }).await;
        assert_eq!(status.code(), Some(0), "{}", sidecar.log());
    }
}

/// Kubernetes removes a terminating pod from its Service's endpoints a little after SIGTERM: meanwhile
/// the sidecar says it is not ready and keeps serving, closing each connection after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_at_once_and_serves_until_the_delay_has_passed() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nshutdown_delay_ms = 3000\n").await;
    assert_eq!(sidecar.admin_get("/readyz").await.status, 200);
    signal(&sidecar, "TERM");
    let started = std::time::Instant::now();
    eventually("/readyz says 503", || async {
        get(sidecar.admin, "/readyz")
            .await
            .is_some_and(|r| r.status == 503)
    })
    .await;
    let mut conn = Conn::open(sidecar.addr).await;
    let r = conn.send(&Delivery::json().bytes()).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "still within the delay"
    );
    assert_eq!(r.status, 200, "deliveries are still served");
    assert_eq!(r.get("Connection"), Some("close"));
    assert!(conn.is_closed().await);
    let status = poll("the sidecar exits", || async { sidecar.exited() }).await;
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "not before the delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_a_forged_delivery_marked_none_and_counts_it() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[auth]\nenforce = false\n").await;
    let r = sidecar.send(&Delivery::json().sign_with("forged")).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.requests()[0].exact("X-Pps-Verified"), Some("none"));
    let r = sidecar.send(&Delivery::json()).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.requests()[1].exact("X-Pps-Verified"), Some("hmac"));
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pps_sidecar_auth_failures_total{reason=\"bad_signature\"}"
        ),
        1.0
    );
    sidecar.log_with("auth_failure=bad_signature", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_is_one_object_per_line_and_one_access_line_per_request() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nlog_format = \"json\"\n").await;
    let d = Delivery::json();
    sidecar.send(&d).await;
    sidecar.send(&d).await;
    let log = sidecar.log_with("\"outcome\":", 2).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not one JSON object: {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    // Access lines are written once each answer is out, so two requests' lines may swap.
    let by = |outcome: &str| {
        lines
            .iter()
            .find(|l| l["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line: {log}"))
    };
    assert_eq!(by("forwarded")["tenant"], "OU1243");
    assert_eq!(by("duplicate")["webhook_id"], d.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_waiting_for_its_new_secret_file_is_applied_when_the_file_appears() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let path = sidecar.dir.path().join("sidecar.toml");
    let next = sidecar.dir.path().join("hmac-next");
    let toml = format!(
        "{}\n[[auth.hmac.secrets]]\nfile = \"{}\"\n",
        std::fs::read_to_string(&path).unwrap(),
        next.display()
    );
    // Replaced atomically, as Kubernetes does, so the watcher never reads a half-written file.
    let tmp = sidecar.dir.path().join("sidecar.toml.new");
    std::fs::write(&tmp, toml).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually("the reload is refused for the missing file", || async {
        metric(
            &sidecar.metrics().await,
            "pps_sidecar_config_reloads_total{result=\"failure\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        sidecar.send(&Delivery::json()).await.status,
        200,
        "old config serves"
    );

    std::fs::write(&next, "rotated-secret\n").unwrap();
    eventually("the new secret verifies", || async {
        sidecar
            .send(&Delivery::json().sign_with("rotated-secret"))
            .await
            .status
            == 200
    })
    .await;
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "pps_sidecar_config_reloads_total{result=\"failure\"}"),
        1.0,
        "the same refusal is reported once, not every second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_be_bound_ends_the_process_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let [admin] = free_addrs();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\n[upstream]\naddress = \"127.0.0.1:9\"\n\
             [auth.hmac]\nsecrets = [{{ value = \"x\" }}]\n"
        ),
    )
    .unwrap();
    let proc = Proc::spawn("pps-sidecar", &mut run_command(&config), dir.path());
    let status = poll("the process exits", || async { proc.exited() }).await;
    assert!(!status.success(), "exit status {status}");
    let out = proc.output();
    assert!(
        out.contains(&addr.to_string()) && out.contains("server.listen"),
        "{out}"
    );
    drop(taken);
}
