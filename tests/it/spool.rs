//! The dead-letter spool: a verified delivery the app refused is kept on disk, and `pps-sidecar spool
//! replay` re-sends it through the running sidecar once the app is fixed, under the dedup contract.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;

/// A spool directory outside the sidecar's own, so that it exists before the sidecar starts.
struct Spool {
    tmp: tempfile::TempDir,
}

impl Spool {
    fn new() -> Spool {
        Spool {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("spool")
    }

    fn toml(&self, extra: &str) -> String {
        format!("[spool]\ndir = \"{}\"\n{extra}", self.dir().display())
    }

    /// The entry files, by name.
    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn bytes(&self) -> u64 {
        self.files()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }
}

fn config(sidecar: &Sidecar) -> String {
    sidecar
        .dir
        .path()
        .join("sidecar.toml")
        .display()
        .to_string()
}

/// `pps-sidecar spool ARGS --config` of `sidecar`, off the runtime: the app answers meanwhile.
async fn cli(sidecar: &Sidecar, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = vec!["spool".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--config".into(), config(sidecar)]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_cli(&args, &[])
    })
    .await
    .unwrap()
}

async fn listed(sidecar: &Sidecar) -> Vec<String> {
    let (code, out, err) = cli(sidecar, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_a_refused_delivery_exactly_once_after_the_app_is_fixed() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(&app, &spool.toml("")).await;
    app.set(Behaviour::Answer(404));
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 404, "relayed as it is");
    let ids = listed(&sidecar).await;
    assert_eq!(ids.len(), 1, "the refused delivery is kept");
    for f in spool.files() {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    let dir_mode = std::fs::metadata(spool.dir()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let (_, shown, _) = cli(&sidecar, &["show", &ids[0]]).await;
    assert!(shown.contains(&d.id()) && shown.contains("404"), "{shown}");

    app.set(Behaviour::Answer(200));
    let (code, out, err) = cli(&sidecar, &["replay", "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("{} delivered 200\n", ids[0]));
    assert_eq!(app.count(), 2);
    let replayed = &app.requests()[1];
    assert_eq!(replayed.exact("X-Pps-Replayed"), Some("true"));
    assert_eq!(replayed.exact("X-Pps-Verified"), Some("hmac"));
    assert_eq!(replayed.exact("X-Pps-Webhook-Id"), Some(d.id().as_str()));
    assert_eq!(replayed.body, d.body);
    assert_eq!(app.requests()[0].get("x-pps-replayed"), None);
    assert!(listed(&sidecar).await.is_empty(), "acknowledged: removed");

    let (code, out, _) = cli(&sidecar, &["replay", &ids[0]]).await;
    assert_eq!((code, out), (1, format!("{} missing\n", ids[0])));
    let again = sidecar.send(&d).await;
    assert_eq!(
        again.get("x-pps-duplicate"),
        Some("true"),
        "the replay committed the claim"
    );
    assert_eq!(app.count(), 2, "delivered exactly once");
    let m = sidecar.admin_get("/metrics").await.text();
    assert_eq!(metric(&m, "pps_sidecar_spool_written_total"), 1.0);
    assert_eq!(
        metric(&m, "pps_sidecar_spool_replayed_total{result=\"delivered\"}"),
        1.0
    );
    assert_eq!(metric(&m, "pps_sidecar_spool_entries"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acknowledged_since_leaves_the_spool_and_is_never_replayed() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let extra = format!("[upstream]\napp_4xx = \"retry\"\n{}", spool.toml(""));
    let sidecar = Sidecar::start(&app, &extra).await;
    app.set(Behaviour::Answer(404));
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 503, "deferred");
    assert_eq!(
        sidecar.send(&d).await.status,
        503,
        "the retry, deferred again"
    );
    assert_eq!(
        listed(&sidecar).await.len(),
        1,
        "a deferred 4xx is spooled too, once per event"
    );
    app.set(Behaviour::Answer(200));
    assert_eq!(
        sidecar.send(&d).await.status,
        200,
        "Pitchpoint's retry got through"
    );
    assert_eq!(app.count(), 3);
    // The app's 2xx drops the event's entry at once: a replay cannot deliver it a second time, however
    // long after (past the dedup TTL, or after a restart of a memory dedup store).
    assert!(listed(&sidecar).await.is_empty(), "the entry is gone");

    let (code, out, err) = cli(&sidecar, &["replay", "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("delivered"), "{out}");
    assert_eq!(app.count(), 3, "not delivered again");
}

/// A 408 included: the sender gets a 503 for it (`UpstreamConfig::defers`), but it is the app's refusal,
/// kept and reported with the app's own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_app_refuses_again_stays_for_a_later_replay() {
    for status in [422u16, 408] {
        let app = TestApp::start().await;
        let spool = Spool::new();
        let sidecar = Sidecar::start(&app, &spool.toml("")).await;
        app.set(Behaviour::Answer(status));
        sidecar.send(&Delivery::json()).await;
        let ids = listed(&sidecar).await;
        let (code, out, _) = cli(&sidecar, &["replay", &ids[0]]).await;
        assert_eq!((code, out), (1, format!("{} refused {status}\n", ids[0])));
        assert_eq!(listed(&sidecar).await, ids);
        let (code, out, _) = cli(&sidecar, &["drop", &ids[0]]).await;
        assert_eq!((code, out), (0, format!("{} dropped\n", ids[0])));
        assert!(listed(&sidecar).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_verified_deliveries_and_refusals_are_spooled_by_default() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(
        &app,
        &format!("[auth]\nenforce = false\n{}", spool.toml("")),
    )
    .await;
    app.set(Behaviour::Answer(404));
    let forged = Delivery::json().sign_with("not-the-secret");
    assert_eq!(
        sidecar.send(&forged).await.status,
        404,
        "shadow mode forwards it"
    );
    app.set(Behaviour::Answer(500));
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 500);
    assert!(listed(&sidecar).await.is_empty(), "{:?}", spool.files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_include_failures_an_app_5xx_and_an_unreachable_app_are_spooled() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(&app, &spool.toml("include_failures = true\n")).await;
    app.set(Behaviour::Answer(500));
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 500);
    app.set(Behaviour::Close);
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 502);
    assert_eq!(listed(&sidecar).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_spooling_leaves_no_entry_and_the_restart_cleans_it() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let first = Sidecar::start(&app, &spool.toml("")).await;
    app.set(Behaviour::Answer(404));
    first.send(&Delivery::json()).await;
    let whole = spool.files().remove(0);
    let bytes = std::fs::read(&whole).unwrap();
    drop(first);
    // What a crash mid-write leaves: the temporary file, at any length. And, were the rename not
    // atomic, an entry cut short.
    let temp = spool.dir().join(".tmp-0000000000001-0123456789ab");
    std::fs::write(&temp, &bytes[..bytes.len() / 2]).unwrap();
    let cut = spool.dir().join("0000000000002-0123456789ab.entry");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();

    let sidecar = Sidecar::start(&app, &spool.toml("")).await;
    assert!(!temp.exists(), "removed at start");
    let ids = listed(&sidecar).await;
    assert_eq!(ids.len(), 1, "only the whole entry: {ids:?}");
    assert!(whole.ends_with(format!("{}.entry", ids[0])));
    let (code, _, err) = cli(&sidecar, &["show", "0000000000002-0123456789ab"]).await;
    assert_ne!(code, 0, "a cut entry is not shown: {err}");
    app.set(Behaviour::Answer(200));
    let (_, out, _) = cli(&sidecar, &["replay", "--all"]).await;
    assert_eq!(
        out,
        format!("{} delivered 200\n", ids[0]),
        "the cut one is never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_never_exceeds_max_bytes_however_many_deliveries_are_refused() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(&app, &spool.toml("max_bytes = 4000\n")).await;
    app.set(Behaviour::Answer(400));
    let mut last = String::new();
    for i in 0..20 {
        let d = Delivery::new(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(400)));
        assert_eq!(sidecar.send(&d).await.status, 400);
        assert!(spool.bytes() <= 4000, "after {i}: {} bytes", spool.bytes());
        last = d.id();
    }
    let ids = listed(&sidecar).await;
    assert!(ids.len() >= 2, "{ids:?}");
    let (_, newest, _) = cli(&sidecar, &["show", ids.last().unwrap()]).await;
    assert!(newest.contains(&last), "the oldest go first");
    let m = sidecar.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&m, "pps_sidecar_spool_dropped_total{reason=\"max_bytes\"}") as usize,
        20 - ids.len()
    );
    assert_eq!(metric(&m, "pps_sidecar_spool_entries") as usize, ids.len());
    assert_eq!(metric(&m, "pps_sidecar_spool_bytes") as u64, spool.bytes());
}

/// An address of this host that is not loopback, if it has one.
fn outside_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_peer_that_is_not_loopback_is_refused() {
    let Some(ip) = outside_ip() else {
        eprintln!("no address but loopback here: the peer check is unit-tested in spool::replay");
        return;
    };
    let app = TestApp::start().await;
    let spool = Spool::new();
    let dir = tempfile::tempdir().unwrap();
    let [listen, admin] = free_addrs();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"0.0.0.0:{}\"\n[upstream]\naddress = \"{}\"\n\
             [auth.hmac]\nsecrets = [{{ value = \"{SECRET}\" }}]\n{}",
            admin.port(),
            app.addr,
            spool.toml("")
        ),
    )
    .unwrap();
    let proc = Proc::spawn("pps-sidecar", &mut run_command(&config), dir.path());
    poll("the sidecar is healthy", || async {
        proc.assert_running();
        serving(admin, "/healthz", listen).await.then_some(())
    })
    .await;
    let body = r#"{"all":true}"#;
    let req = format!(
        "POST /spool/replay HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let outside = std::net::SocketAddr::new(ip, admin.port());
    assert_eq!(send(outside, req.as_bytes()).await.status, 403);
    // As a service mesh forwards the cluster's connections: from a loopback address, to the pod's own.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.6:0".parse().unwrap()).unwrap();
    let mut meshed = socket.connect(outside).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut meshed, req.as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut meshed, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 403", "a loopback peer on a pod address");
    assert_eq!(
        send(admin, req.as_bytes()).await.status,
        200,
        "loopback may"
    );
}

#[test]
fn check_refuses_a_spool_dir_that_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let config = tmp.path().join("sidecar.toml");
    let write = |dir: &Path| {
        std::fs::write(
            &config,
            format!(
                "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{{ value = \"x\" }}]\n\
                 [spool]\ndir = \"{}\"\n",
                dir.display()
            ),
        )
        .unwrap();
    };
    write(&file.join("spool"));
    let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("spool.dir"), "{err}");
    write(&tmp.path().join("spool"));
    let (code, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("spool"), "{out}");
    assert!(tmp.path().join("spool").is_dir(), "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_cannot_be_written_changes_nothing_in_the_answer_and_is_counted() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(&app, &spool.toml("")).await;
    std::fs::remove_dir_all(spool.dir()).unwrap();
    app.set(Behaviour::Answer(404));
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 404);
    let m = sidecar.admin_get("/metrics").await.text();
    assert_eq!(metric(&m, "pps_sidecar_spool_write_failures_total"), 1.0);
    assert_eq!(metric(&m, "pps_sidecar_spool_written_total"), 0.0);
    let log = sidecar.log_with("spool: cannot keep", 1).await;
    assert!(!log.contains("12.50"), "no body in the log: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_older_than_the_dedup_ttl_is_kept_but_never_replayed() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let extra = format!("{}[dedup]\nttl_seconds = 1\n", spool.toml(""));
    let sidecar = Sidecar::start(&app, &extra).await;
    app.set(Behaviour::Answer(404));
    sidecar.send(&Delivery::json()).await;
    // Whether the app acknowledged the event since can no longer be known once the TTL has passed.
    eventually("the entry outlives the dedup TTL", || async {
        let (_, out, _) = cli(&sidecar, &["replay", "--all"]).await;
        out.contains(" expired")
    })
    .await;
    let seen = app.count();
    app.set(Behaviour::Answer(200));
    let (_, out, _) = cli(&sidecar, &["replay", "--all"]).await;
    assert!(out.ends_with(" expired\n"), "{out}");
    assert_eq!(app.count(), seen, "not sent");
    assert_eq!(listed(&sidecar).await.len(), 1, "kept for an operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_list_and_show_quote_what_a_sender_wrote() {
    let app = TestApp::start().await;
    let spool = Spool::new();
    let sidecar = Sidecar::start(&app, &spool.toml("")).await;
    app.set(Behaviour::Answer(422));
    let d = Delivery::json()
        .set("X-Pps-Tenant-Id", Some("OU1\u{2028}tenant=forged"))
        .set("X-Pps-Topic", Some("orders/placed\u{202e}x"));
    assert_eq!(sidecar.send(&d).await.status, 422);
    let (code, out, err) = cli(&sidecar, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("tenant=\"OU1\\u{2028}tenant=forged\" topic=\"orders/placed\\u{202e}x\""),
        "{out}"
    );
    let id = out.split(' ').next().unwrap();
    let (code, out, _) = cli(&sidecar, &["show", id]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("tenant: \"OU1\\u{2028}tenant=forged\"\n"),
        "{out}"
    );
}
