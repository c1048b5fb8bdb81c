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
  { value = "old-value-1", not_after = "2020-01-01T00:00:00Z" },
  { value = "older-value-2", not_after = "2021-01-01T00:00:00Z" },
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
    assert!(!error.contains("value-"), "never a secret's value: {error}");
}
