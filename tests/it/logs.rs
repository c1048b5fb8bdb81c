//! What the process writes to its log, read from the real binary: no request value can break a text line
//! (U+2028, U+2029, NEL and the invisible format characters are escaped too), start-up errors come out in
//! the format the file asks for, and a reload that changes `server.log_format` changes every line after it.

use crate::common::*;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Characters a log reader may take for a line break, or that hide or reorder text on a terminal.
const BREAKERS: [char; 6] = [
    '\u{2028}', '\u{2029}', '\u{85}', '\u{202e}', '\u{200b}', '\u{feff}',
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_line_escapes_line_separators_and_invisible_characters_from_headers() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let tenant: String = format!(
        "OU{}level=error{}x{}y{}z{}w{}",
        BREAKERS[0], BREAKERS[1], BREAKERS[2], BREAKERS[3], BREAKERS[4], BREAKERS[5]
    );
    let d = Delivery::json().set("X-Pps-Tenant-Id", Some(&tenant));
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = sidecar.log_with("target=access", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("target=access"))
        .unwrap()
        .to_string();
    // One line, every such character escaped: a reader splitting on any of them still sees one record.
    for c in BREAKERS {
        assert!(!log.contains(c), "raw {c:?} in the log:\n{log}");
    }
    assert!(
        line.contains(
            r#"tenant="OU\u{2028}level=error\u{2029}x\u{85}y\u{202e}z\u{200b}w\u{feff}""#
        ),
        "{line}"
    );
    // The app still received the value as sent: escaping is for the log only.
    assert_eq!(
        app.requests()[0].exact("X-Pps-Tenant-Id"),
        Some(tenant.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_line_escapes_line_separators_and_parses_back_to_the_value() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nlog_format = \"json\"\n").await;
    let tenant = "OU\u{2028}1\u{2029}2\u{85}3";
    let r = sidecar
        .send(&Delivery::json().set("X-Pps-Tenant-Id", Some(tenant)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = sidecar.log_with("\"target\":\"access\"", 1).await;
    for c in BREAKERS {
        assert!(!log.contains(c), "raw {c:?} in the log:\n{log}");
    }
    let access: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "access")
        .unwrap();
    assert_eq!(access["tenant"], tenant);
}

#[test]
fn a_refused_file_at_start_up_is_one_json_line_when_the_file_asks_for_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "[server]\nlog_format = \"json\"\n\n[upstream]\naddress = \"127.0.0.1:1\"\n\n[dedup]\nttl_secondz = 5\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["run", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty(), "nothing on stderr");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not one JSON object: {l}"));
        assert_eq!(v["level"], "error", "{l}");
        let msg = v["msg"].as_str().unwrap();
        assert!(
            msg.contains("sidecar.toml") && msg.contains("ttl_secondz"),
            "{l}"
        );
    }

    // With the default text format, the same refusal is the plain `error: FILE: key ...` line.
    std::fs::write(
        &config,
        "[upstream]\naddress = \"127.0.0.1:1\"\n\n[dedup]\nttl_secondz = 5\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["run", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: ") && err.contains("ttl_secondz"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_log_format_applies_to_every_following_line() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nlog_format = \"text\"\n").await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    sidecar.log_with("target=access", 1).await;

    let path = sidecar.dir.path().join("sidecar.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("log_format = \"text\""), "{text}");
    std::fs::write(&path, text.replace("\"text\"", "\"json\"")).unwrap();
    signal(sidecar.pid(), "HUP");
    sidecar.log_with("configuration reloaded", 1).await;
    // The reload's own lines, and every line after, are JSON: a delivery's access line included.
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    let log = sidecar.log_with("\"target\":\"access\"", 1).await;
    let lines: Vec<&str> = log.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("server.log_format is now json"))
        .unwrap_or_else(|| panic!("no line about the change:\n{log}"));
    assert!(
        lines[..at].iter().all(|l| l.starts_with("ts=")),
        "text before the reload:\n{log}"
    );
    let after = lines[at..].join("\n");
    let mut access = 0;
    for l in &lines[at..] {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON after the reload: {l}"));
        access += usize::from(v["target"] == "access");
    }
    assert_eq!(access, 1, "{after}");
    assert_eq!(
        metric(
            &sidecar.metrics().await,
            "pps_sidecar_config_last_reload_success"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_keeps_last_reload_success_at_0_until_a_good_file_replaces_it() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, "pps_sidecar_config_last_reload_success"), 1.0);
    let path = sidecar.dir.path().join("sidecar.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    // Refused: the old configuration serves, and the gauge says so while the file stands.
    std::fs::write(&path, format!("{good}\n[dedup]\nttl_secondz = 5\n")).unwrap();
    eventually("the refusal shows", || async {
        let m = sidecar.metrics().await;
        metric(&m, "pps_sidecar_config_last_reload_success") == 0.0
            && metric(&m, "pps_sidecar_config_reloads_total{result=\"failure\"}") == 1.0
    })
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    // The refused file is retried every second; each retry that fails again leaves the gauge at 0 and
    // the counter at 1. Wait for a retry to have happened: a SIGHUP is one more attempt, not counted.
    signal(sidecar.pid(), "HUP");
    sidecar.log_with("reload (SIGHUP) refused", 1).await;
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, "pps_sidecar_config_last_reload_success"), 0.0);

    std::fs::write(&path, good).unwrap();
    eventually("the good file is in force", || async {
        let m = sidecar.metrics().await;
        metric(&m, "pps_sidecar_config_last_reload_success") == 1.0
            && metric(&m, "pps_sidecar_config_reloads_total{result=\"success\"}") >= 1.0
    })
    .await;
}

/// Access lines wait to be written together (one write for many deliveries), yet a line written after
/// them never comes before them, and none is lost when the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_keep_their_order_with_other_lines_and_are_all_written_before_exit() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nshutdown_delay_ms = 0\n").await;
    let mut conn = Conn::open(sidecar.addr).await;
    for _ in 0..5 {
        assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    }
    let unnamed = Delivery::json().set("X-Pps-Webhook-Id", None);
    assert_eq!(conn.send(&unnamed.bytes()).await.status, 400);
    for _ in 0..20 {
        assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    }
    drop(conn);
    signal(sidecar.pid(), "TERM");
    let status = poll("the sidecar exits", || async { sidecar.exited() }).await;
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());

    let log = sidecar.log();
    let lines: Vec<&str> = log.lines().collect();
    let access: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("target=access"))
        .collect();
    assert_eq!(access.len(), 26, "every request's access line:\n{log}");
    let refused = lines
        .iter()
        .position(|l| l.contains("msg=\"bad request: "))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{log}"));
    assert!(
        access[4] < refused && refused < access[5],
        "the refusal's line comes after the access lines before it and before its own:\n{log}"
    );
}

/// `RUST_LOG`'s `/pattern` keeps only the lines whose message matches, access lines included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_message_filter_applies_to_access_lines() {
    let app = TestApp::start().await;
    let env = [("RUST_LOG", "info/outcome=duplicate")];
    let sidecar = Sidecar::start_with(app.addr, "", &env).await;
    let d = Delivery::json();
    assert_eq!(sidecar.send(&d).await.status, 200);
    let again = sidecar.send(&d).await;
    assert_eq!(again.get("X-Pps-Duplicate"), Some("true"));
    signal(sidecar.pid(), "TERM");
    let status = poll("the sidecar exits", || async { sidecar.exited() }).await;
    assert_eq!(status.code(), Some(0), "{}", sidecar.log());
    let log = sidecar.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("target=access"))
        .collect();
    assert_eq!(access.len(), 1, "only the duplicate's line:\n{log}");
    assert!(access[0].contains("outcome=duplicate"), "{log}");
}
