//! HMAC secrets over their lifetime against the real binary: past their `not_after`, and (with their
//! names) counted by the deliveries they verify, through a rotation.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_secret_past_its_not_after_a_signed_delivery_is_503_and_said_loudly() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        r#"
[auth.hmac]
secrets = [
  { value = "old-value-1", not_after = "2020-01-01T00:00:00Z", name = "old" },
  { value = "older-value-2", not_after = "2021-01-01T00:00:00Z", name = "older" },
]
"#,
    )
    .await;
    for d in [
        Delivery::json().sign_with("old-value-1"),
        Delivery::json().sign_with("forged"),
    ] {
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, 503, "a configuration problem, not a forgery");
        assert!(
            r.get("retry-after").is_some(),
            "Pitchpoint is told to retry"
        );
    }
    assert_eq!(app.count(), 0);
    let log = sidecar.log_with("auth_failure=no_valid_secret", 2).await;
    let error = log
        .lines()
        .find(|l| l.contains("level=error") && l.contains("every secret is past its not_after"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(error.contains("(old, older)"), "named: {error}");
    assert!(!error.contains("value-"), "never a secret's value: {error}");
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, "pps_sidecar_hmac_secrets_expired"), 2.0);
    assert_eq!(
        metric(
            &m,
            "pps_sidecar_auth_failures_total{reason=\"no_valid_secret\"}"
        ),
        2.0
    );
}

/// Replaces `auth.hmac.secrets` in the running sidecar's file with `secrets` (a TOML array), and waits
/// for the sidecar to have reloaded it (`reloads` successful reloads in all).
async fn set_secrets(sidecar: &Sidecar, secrets: &str, reloads: f64) {
    let path = sidecar.dir.path().join("sidecar.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let value: toml::Table = format!("secrets = {secrets}").parse().unwrap();
    config["auth"]["hmac"]
        .as_table_mut()
        .unwrap()
        .insert("secrets".into(), value["secrets"].clone());
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    eventually("the new secrets are in force", || async {
        let m = sidecar.metrics().await;
        metric(&m, "pps_sidecar_config_reloads_total{result=\"success\"}") >= reloads
    })
    .await;
}

fn verified_by(scrape: &str, secret: &str) -> Option<f64> {
    let series = format!("pps_sidecar_hmac_verified_total{{secret=\"{secret}\"}}");
    scrape.contains(&series).then(|| metric(scrape, &series))
}

/// The README's rotation runbook, step by step: add the new secret, watch it take over while the old one
/// stays flat, remove the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_watched_by_the_secret_that_verified_each_delivery() {
    let current = r#"{ value = "current-value", name = "current" }"#;
    let next = r#"{ value = "next-value", name = "next" }"#;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &format!("[auth.hmac]\nsecrets = [{current}]\n")).await;
    let m = sidecar.metrics().await;
    assert_eq!(
        verified_by(&m, "current"),
        Some(0.0),
        "there before any delivery"
    );
    for _ in 0..2 {
        let r = sidecar
            .send(&Delivery::json().sign_with("current-value"))
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(verified_by(&sidecar.metrics().await, "current"), Some(2.0));

    set_secrets(&sidecar, &format!("[{current}, {next}]"), 1.0).await;
    let m = sidecar.metrics().await;
    assert_eq!(
        verified_by(&m, "current"),
        Some(2.0),
        "a reload keeps the count"
    );
    assert_eq!(verified_by(&m, "next"), Some(0.0));

    // Pitchpoint switches: the new secret takes over, the old one stays flat.
    for _ in 0..3 {
        let r = sidecar
            .send(&Delivery::json().sign_with("next-value"))
            .await;
        assert_eq!(r.status, 200);
    }
    let m = sidecar.metrics().await;
    assert_eq!(verified_by(&m, "next"), Some(3.0));
    // The access line names the secret that verified each delivery.
    let log = sidecar.log_with("credential=\"next\"", 3).await;
    assert_eq!(log.matches("credential=\"current\"").count(), 2, "{log}");
    assert_eq!(verified_by(&m, "current"), Some(2.0));

    set_secrets(&sidecar, &format!("[{next}]"), 2.0).await;
    let m = sidecar.metrics().await;
    assert_eq!(
        verified_by(&m, "current"),
        None,
        "a removed secret leaves the page"
    );
    assert_eq!(verified_by(&m, "next"), Some(3.0));
    let r = sidecar
        .send(&Delivery::json().sign_with("current-value"))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count(), 5);
}
