//! JWT bearer authentication against a real loopback OpenID Connect issuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::oidc::*;
use crate::common::*;
use serde_json::json;

fn bearer(d: Delivery, token: &str) -> Delivery {
    d.set("X-Pps-Hmac-Sha256", None)
        .set("Authorization", Some(&format!("Bearer {token}")))
}

async fn wait_ready(sidecar: &Sidecar) {
    eventually("/readyz answers 200", || async {
        sidecar.admin_get("/readyz").await.status == 200
    })
    .await;
}

async fn jwt_sidecar(app: &TestApp, issuer: &TestIssuer, extra: &str) -> Sidecar {
    let sidecar = Sidecar::start(app, &format!("{}{extra}", issuer.toml("[\"jwt\"]"))).await;
    wait_ready(&sidecar).await;
    sidecar
}

/// A sidecar trusting, with `methods`, an issuer that is not up yet at `addr` (`TestIssuer::start_on`
/// brings it up); `claims` are valid claims of it.
struct LateIssuer {
    key: TestKey,
    addr: std::net::SocketAddr,
    claims: serde_json::Value,
    app: TestApp,
    sidecar: Sidecar,
}

impl LateIssuer {
    async fn start(methods: &str) -> LateIssuer {
        let [addr] = free_addrs();
        let app = TestApp::start().await;
        let url = format!("http://{addr}/late-project");
        let sidecar = Sidecar::start(&app, &trust_toml(&url, "late-project", methods)).await;
        let t = now();
        let claims = json!({ "iss": url, "aud": "late-project", "sub": "pitchpoint-webhooks",
                             "iat": t, "exp": t + 3600 });
        LateIssuer {
            key: TestKey::generate("k1"),
            addr,
            claims,
            app,
            sidecar,
        }
    }

    async fn come_up(&self) -> TestIssuer {
        let issuer = TestIssuer::start_on(self.addr, "late-project", &[&self.key]).await;
        wait_ready(&self.sidecar).await;
        issuer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_passes_and_the_app_sees_subject_and_issuer() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "").await;

    let d =
        bearer(Delivery::json(), &key.token(&issuer.claims())).add("X-Pps-Jwt-Subject", "spoofed");
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let req = &app.requests()[0];
    assert_eq!(req.exact("X-Pps-Verified"), Some("jwt"));
    assert_eq!(req.all("x-pps-jwt-subject"), vec!["pitchpoint-webhooks"]);
    assert_eq!(req.exact("X-Pps-Jwt-Issuer"), Some(issuer.issuer.as_str()));
    assert_eq!(
        req.get("authorization"),
        None,
        "the token does not reach the app"
    );
    let token = key.token(&issuer.claims());
    sidecar.send(&bearer(Delivery::json(), &token)).await;
    let log = sidecar.log_with("outcome=forwarded", 2).await;
    assert!(
        !log.contains(&token[token.len() - 20..]),
        "tokens never reach the log"
    );
    assert_eq!(
        log.matches("verified=jwt credential=\"k1\"").count(),
        2,
        "the key that verified it: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_get_403_and_the_app_is_untouched() {
    let key = TestKey::generate("k1");
    let stranger = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "[auth.jwt]\nleeway_seconds = 60\n").await;
    let t = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = issuer.claims();
        f(&mut c);
        c
    };
    let valid = key.token(&issuer.claims());
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
        parts[1] = b64(with(&|c| c["sub"] = json!("admin")).to_string().as_bytes());
        parts.join(".")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            key.token(&with(&|c| c["exp"] = json!(t - 3600))),
            "expired",
        ),
        (
            "not yet valid",
            key.token(&with(&|c| c["nbf"] = json!(t + 3600))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            key.token(&with(&|c| c["iat"] = json!(t + 3600))),
            "not_yet_valid",
        ),
        (
            "untrusted issuer",
            key.token(&with(&|c| {
                c["iss"] = json!("https://securetoken.google.com/evil")
            })),
            "untrusted_issuer",
        ),
        (
            "wrong audience",
            key.token(&with(&|c| c["aud"] = json!("other-project"))),
            "wrong_audience",
        ),
        (
            "no exp",
            key.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "missing_claim",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT", "kid": "k1"})
                    .to_string()
                    .as_bytes()),
                b64(issuer.claims().to_string().as_bytes())
            ),
            "malformed_token",
        ),
        (
            "HS256 keyed with the public key",
            hs256_token(
                &json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
                &issuer.claims(),
                &key.public_bytes(),
            ),
            "disallowed_algorithm",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "signed by another key with the same kid",
            stranger.token(&issuer.claims()),
            "bad_signature",
        ),
        (
            "unknown kid",
            TestKey::generate("k-unknown").token(&issuer.claims()),
            "unknown_key",
        ),
        ("malformed", "not.a.jwt".to_string(), "malformed_token"),
        ("garbage", "abc".to_string(), "malformed_token"),
        ("empty", String::new(), "malformed_token"),
        (
            "oversized",
            format!("{valid}{}", "A".repeat(9000)),
            "malformed_token",
        ),
    ];
    for (what, token, _) in &cases {
        let r = sidecar.send(&bearer(Delivery::json(), token)).await;
        assert_eq!(r.status, 403, "{what}");
    }
    let basic = Delivery::json()
        .set("X-Pps-Hmac-Sha256", None)
        .set("Authorization", Some("Basic dXNlcjpwYXNz"));
    assert_eq!(sidecar.send(&basic).await.status, 403, "not a bearer token");
    assert_eq!(app.count(), 0, "the app is never contacted");

    let log = sidecar
        .log_with("outcome=unauthorized", cases.len() + 1)
        .await;
    for (what, _, reason) in &cases {
        assert!(
            log.contains(&format!("auth_failure={reason}")),
            "{what}: reason {reason} not logged"
        );
    }
}

/// An issuer that publishes `old` and will publish `new`, and a sidecar that trusts it.
struct Rotation {
    old: TestKey,
    new: TestKey,
    issuer: TestIssuer,
    app: TestApp,
    sidecar: Sidecar,
}

impl Rotation {
    async fn start() -> Rotation {
        let old = TestKey::generate("2026-10");
        let new = TestKey::generate("2026-11");
        let issuer = TestIssuer::start("my-project", &[&old]).await;
        let app = TestApp::start().await;
        let sidecar = jwt_sidecar(&app, &issuer, "").await;
        Rotation {
            old,
            new,
            issuer,
            app,
            sidecar,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_added_to_the_jwks_is_used_without_a_restart() {
    let Rotation {
        old,
        new,
        issuer,
        sidecar,
        ..
    } = Rotation::start().await;
    let before = issuer.jwks_fetches();
    issuer.set_keys(&[&old, &new]);
    let r = sidecar
        .send(&bearer(Delivery::json(), &new.token(&issuer.claims())))
        .await;
    assert_eq!(
        r.status, 200,
        "the new key is fetched on first sight of its kid"
    );
    assert_eq!(issuer.jwks_fetches(), before + 1);
    let r = sidecar
        .send(&bearer(Delivery::json(), &old.token(&issuer.claims())))
        .await;
    assert_eq!(r.status, 200, "the old key still verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_causes_only_a_few_jwks_fetches() {
    let key = TestKey::generate("real");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "").await;
    let before = issuer.jwks_fetches();
    let forger = TestKey::generate("forged");
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut claims = issuer.claims();
        claims["sub"] = json!(format!("attempt-{i}"));
        let token = forger.token_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": format!("forged-{i}")}),
            &claims,
        );
        let d = bearer(Delivery::json(), &token);
        let addr = sidecar.addr;
        tasks.push(tokio::spawn(
            async move { send(addr, &d.bytes()).await.status },
        ));
    }
    let mut proven = 0;
    for t in tasks {
        // 403 when a key set fetched after it arrived lacks its kid; 503 when it arrived before the one
        // refetch began and no other was allowed: never let through.
        match t.await.unwrap() {
            403 => proven += 1,
            503 => {}
            other => panic!("a forged kid answered {other}"),
        }
    }
    assert!(
        proven >= 1,
        "the token that caused the refetch is proven forged"
    );
    let fetched = issuer.jwks_fetches() - before;
    assert!(fetched <= 2, "{fetched} JWKS fetches for 30 unknown kids");
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_keep_passing_when_the_issuer_goes_down() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let claims = issuer.claims();
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "[auth.jwt]\njwks_refresh_seconds = 1\n").await;
    issuer.stop();
    // Let at least one scheduled refresh fail, observed through the metrics.
    eventually("a refresh fails", || async {
        let m = sidecar.admin_get("/metrics").await.text();
        metric(&m, "pps_sidecar_jwks_refresh_total{result=\"failure\"}") >= 1.0
    })
    .await;
    let r = sidecar
        .send(&bearer(Delivery::json(), &key.token(&claims)))
        .await;
    assert_eq!(r.status, 200, "the last good keys keep serving");
    assert!(sidecar.log().contains("the last good keys stay in use"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_jwks_is_loaded() {
    let late = LateIssuer::start("[\"jwt\"]").await;
    let r = late.sidecar.admin_get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("jwks: not loaded"), "{}", r.text());
    let _issuer = late.come_up().await;
    let r = late
        .sidecar
        .send(&bearer(Delivery::json(), &late.key.token(&late.claims)))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hmac_and_jwt_either_credential_alone_is_enough() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &issuer.toml("[\"hmac\", \"jwt\"]")).await;
    wait_ready(&sidecar).await;

    let hmac_only = Delivery::json();
    let r = sidecar.send(&hmac_only).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.requests()[0].exact("X-Pps-Verified"), Some("hmac"));

    let jwt_only = bearer(Delivery::json(), &key.token(&issuer.claims()));
    let r = sidecar.send(&jwt_only).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.requests()[1].exact("X-Pps-Verified"), Some("jwt"));

    let forged_hmac_valid_jwt = Delivery::json().sign_with("wrong").set(
        "Authorization",
        Some(&format!("Bearer {}", key.token(&issuer.claims()))),
    );
    assert_eq!(sidecar.send(&forged_hmac_valid_jwt).await.status, 200);

    let neither = bearer(Delivery::json().sign_with("wrong"), "bad.token.here")
        .set("X-Pps-Hmac-Sha256", Some(&"0".repeat(64)));
    assert_eq!(sidecar.send(&neither).await.status, 403);
    let nothing = Delivery::json().set("X-Pps-Hmac-Sha256", None);
    assert_eq!(sidecar.send(&nothing).await.status, 403);
    assert_eq!(app.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_gets_503_not_403_while_the_issuers_keys_cannot_be_loaded() {
    let late = LateIssuer::start("[\"jwt\"]").await;
    let d = bearer(Delivery::json(), &late.key.token(&late.claims));
    let r = late.sidecar.send(&d).await;
    assert_eq!(r.status, 503, "undecidable is not forged: {}", r.text());
    assert!(
        r.get("retry-after").is_some(),
        "Pitchpoint is told to retry"
    );
    assert_eq!(late.app.count(), 0);
    late.sidecar
        .log_with("auth_failure=keys_not_loaded", 1)
        .await;

    let _issuer = late.come_up().await;
    let r = late.sidecar.send(&d).await;
    assert_eq!(r.status, 200, "the retry goes through once the keys load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_allow_lists_refuse_other_subjects_and_unverified_emails() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let by_subject = jwt_sidecar(&app, &issuer, "subjects = [\"pitchpoint-webhooks\"]\n").await;
    let mut other = issuer.claims();
    other["sub"] = json!("any-firebase-user");
    let r = by_subject
        .send(&bearer(Delivery::json(), &key.token(&other)))
        .await;
    assert_eq!(r.status, 403);
    let r = by_subject
        .send(&bearer(Delivery::json(), &key.token(&issuer.claims())))
        .await;
    assert_eq!(r.status, 200);
    by_subject
        .log_with("auth_failure=subject_not_allowed", 1)
        .await;

    let by_email = jwt_sidecar(&app, &issuer, "emails = [\"hooks@pitchpoint.example\"]\n").await;
    let mut claims = issuer.claims();
    claims["email"] = json!("Hooks@Pitchpoint.example");
    claims["email_verified"] = json!(false);
    let r = by_email
        .send(&bearer(Delivery::json(), &key.token(&claims)))
        .await;
    assert_eq!(r.status, 403, "an unverified email proves nothing");
    claims["email_verified"] = json!(true);
    let r = by_email
        .send(&bearer(Delivery::json(), &key.token(&claims)))
        .await;
    assert_eq!(r.status, 200);
    claims["email"] = json!("someone@else.example");
    let r = by_email
        .send(&bearer(Delivery::json(), &key.token(&claims)))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jwt_only_a_sender_without_a_valid_token_is_refused_before_its_body_is_read() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start("my-project", &[&key]).await;
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "").await;
    // A head declaring a megabyte, and no body at all: the answer must not wait for it.
    for auth in ["", "Authorization: Bearer not.a.token\r\n"] {
        let head = format!(
            "POST /webhooks HTTP/1.1\r\nHost: x\r\nX-Pps-Topic: t\r\nX-Pps-Webhook-Id: 1\r\n{auth}\
             Content-Length: 1000000\r\n\r\n"
        );
        let mut conn = Conn::open(sidecar.addr).await;
        conn.write(head.as_bytes()).await;
        let r = conn.read().await.expect("an answer before any body byte");
        assert_eq!(r.status, 403);
    }
    let m = sidecar.admin_get("/metrics").await.text();
    assert_eq!(metric(&m, "pps_sidecar_buffered_bytes"), 0.0);
    assert_eq!(app.count(), 0);
}

/// A token signed by `key` under an unknown `kid` of the forger's choosing.
fn forged(key: &TestKey, issuer: &TestIssuer, kid: &str) -> Delivery {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    bearer(
        Delivery::json(),
        &key.token_with_header(&header, &issuer.claims()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_sending_unknown_kids_cannot_keep_a_newly_published_key_out() {
    let Rotation {
        old,
        new,
        issuer,
        app,
        sidecar,
    } = Rotation::start().await;
    let forger = TestKey::generate("forged");

    // An unknown kid is looked up at once: missing from keys fetched after the token arrived, it is proof.
    let before = issuer.jwks_fetches();
    let r = sidecar.send(&forged(&forger, &issuer, "forged-0")).await;
    assert_eq!(r.status, 403);
    assert_eq!(issuer.jwks_fetches(), before + 1);

    // Pitchpoint publishes its new key and signs with it while that refetch's window still runs.
    issuer.set_keys(&[&old, &new]);
    let genuine = bearer(Delivery::json(), &new.token(&issuer.claims()));
    let r = sidecar.send(&genuine).await;
    assert_eq!(
        r.status,
        503,
        "not proven forged, so not a 403: {}",
        r.text()
    );
    let retry_after: u64 = r.get("retry-after").expect("Retry-After").parse().unwrap();
    sidecar
        .log_with("auth_failure=unknown_key_unchecked", 1)
        .await;

    // The forger keeps sending unknown kids while Pitchpoint waits as it was told to.
    let stop = Arc::new(AtomicBool::new(false));
    let forging = {
        let (stop, addr) = (stop.clone(), sidecar.addr);
        let tokens: Vec<Vec<u8>> = (1..=1000)
            .map(|i| forged(&forger, &issuer, &format!("forged-{i}")).bytes())
            .collect();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for token in tokens.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                answers.push(send(addr, token).await.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    // Pitchpoint's retry, after the Retry-After it was given: the sender's side of the contract.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = sidecar.send(&genuine).await;
    stop.store(true, Ordering::SeqCst);
    let answers = forging.await.unwrap();
    assert_eq!(r.status, 200, "the retry gets through: {}", r.text());
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|s| *s == 403 || *s == 503),
        "{answers:?}"
    );
    assert_eq!(app.count(), 1, "only the genuine delivery reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hmac_and_jwt_a_bad_signature_is_not_proof_while_the_token_cannot_be_checked() {
    let late = LateIssuer::start("[\"hmac\", \"jwt\"]").await;
    let d = bearer(Delivery::json(), &late.key.token(&late.claims))
        .set("X-Pps-Hmac-Sha256", Some(&"0".repeat(64)));
    let r = late.sidecar.send(&d).await;
    assert_eq!(r.status, 503, "the token may still verify it: {}", r.text());
    assert!(r.get("retry-after").is_some());
    late.sidecar
        .log_with("auth_failure=keys_not_loaded", 1)
        .await;

    let _issuer = late.come_up().await;
    assert_eq!(late.sidecar.send(&d).await.status, 200, "and it does");
    let unsigned = Delivery::json().set("X-Pps-Hmac-Sha256", Some(&"0".repeat(64)));
    assert_eq!(late.sidecar.send(&unsigned).await.status, 403);
    assert_eq!(late.app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_counted_by_issuer_and_signing_key() {
    let old = TestKey::generate("2026-10");
    let new = TestKey::generate("2026-11");
    let issuer = TestIssuer::start("my-project", &[&old, &new]).await;
    let app = TestApp::start().await;
    let sidecar = jwt_sidecar(&app, &issuer, "").await;
    for key in [&old, &new, &new] {
        let r = sidecar
            .send(&bearer(Delivery::json(), &key.token(&issuer.claims())))
            .await;
        assert_eq!(r.status, 200);
    }
    let series = |kid: &str| {
        format!(
            "pps_sidecar_jwt_verified_total{{issuer=\"{}\",kid=\"{kid}\"}}",
            issuer.issuer
        )
    };
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, &series("2026-10")), 1.0);
    assert_eq!(metric(&m, &series("2026-11")), 2.0);
    assert_eq!(metric(&m, &series("other")), 0.0);
    // A forged kid is no series of its own: only keys of the loaded set are.
    sidecar
        .send(&forged(&TestKey::generate("x"), &issuer, "forged-kid"))
        .await;
    assert!(!sidecar.metrics().await.contains("forged-kid"));
}
