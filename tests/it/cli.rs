//! The command line: `check` and `sign`, run as a user would.

use crate::common::*;

#[test]
fn check_accepts_the_shipped_example_config() {
    let conf = repo_path("conf/sidecar.toml");
    let (code, out, err) = run_cli(
        &["check", "--config", conf.to_str().unwrap()],
        &[("PPS_WEBHOOK_SECRET", "anything")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sidecar.toml: ok"), "{out}");
    assert_eq!(out.lines().count(), 1, "a one-line summary: {out}");
}

#[test]
fn check_reads_the_config_path_from_the_environment() {
    let conf = repo_path("conf/sidecar.toml");
    let (code, _, err) = run_cli(
        &["check"],
        &[
            ("PPS_WEBHOOK_SECRET", "anything"),
            ("PPS_SIDECAR_CONFIG", conf.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_names_the_file_and_key_of_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[upstream]\naddress = \"127.0.0.1:3000\"\n\n[dedup]\nttl_secs = 60\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("dedup"), "{err}");
    assert!(err.contains("ttl_secs"), "{err}");
}

#[test]
fn check_names_the_variable_of_a_missing_secret() {
    let conf = repo_path("conf/sidecar.toml");
    let (code, _, err) = run_cli(&["check", "--config", conf.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("auth.hmac.secrets[0].env"), "{err}");
    assert!(err.contains("PPS_WEBHOOK_SECRET"), "{err}");
}

#[test]
fn check_never_prints_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{ value = \"hunter2-very-secret\", not_after = \"soon\" }]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("not_after"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_a_clear_message() {
    let (code, _, err) = run_cli(&["run", "--config", "/nonexistent/sidecar.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/sidecar.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_output_is_accepted_by_a_running_sidecar() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let body_path = sidecar.dir.path().join("order.json");
    std::fs::write(&body_path, br#"{"order":{"id":42}}"#).unwrap();
    let (code, out, err) = run_cli(
        &[
            "sign",
            "--body",
            body_path.to_str().unwrap(),
            "--secret-env",
            "PPS_TEST_SIGN_SECRET",
            "--topic",
            "orders/updated",
            "--tenant",
            "OU1243",
        ],
        &[("PPS_TEST_SIGN_SECRET", SECRET)],
    );
    assert_eq!(code, 0, "{err}");
    let mut d = Delivery::new(std::fs::read(&body_path).unwrap());
    d.headers.clear();
    for line in out.lines() {
        let (k, v) = line.split_once(": ").expect("header lines");
        d.headers.push((k.into(), v.into()));
    }
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        app.requests()[0].exact("X-Pps-Topic"),
        Some("orders/updated")
    );

    // The curl form, run by a shell as the user would paste it.
    let (code, cmd, err) = run_cli(
        &[
            "sign",
            "--body",
            body_path.to_str().unwrap(),
            "--secret-value",
            SECRET,
            "--url",
            &format!("http://{}/webhooks", sidecar.addr),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd.trim())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(app.count(), 2);
}
