//! Redis as production runs it: TLS with a CA made at run time, a password and an ACL user from a secret
//! file, and the strict mode (`on_store_error = "refuse"`). Every server is a real `redis-server`.

use crate::common::*;

struct Tls {
    ca: TestCa,
    redis: TestRedis,
    tls_port: u16,
    secrets: tempfile::TempDir,
}

async fn tls_redis() -> Tls {
    let ca = TestCa::new();
    let [port, tls_port] = free_ports();
    let redis = TestRedis::start_tls_with_auth(port, tls_port, &ca).await;
    Tls {
        ca,
        redis,
        tls_port,
        secrets: tempfile::tempdir().unwrap(),
    }
}

impl Tls {
    /// The `[dedup]` table for the ACL user `orders`, its password in a file, in strict mode, with the
    /// `tls` lines. A debug build loading the system roots on a loaded machine may take longer than the
    /// default 250 ms for its first handshake: 1 s.
    fn toml(&self, password: &str, tls: &str) -> String {
        let file = write_file(
            self.secrets.path(),
            "redis-password",
            &format!("{password}\n"),
        );
        format!(
            "[dedup]\nbackend = \"redis\"\nredis_url = \"rediss://127.0.0.1:{}\"\nredis_prefix = \"test-app:\"\n\
             redis_timeout_ms = 1000\nredis_username = \"orders\"\nredis_password = {{ file = \"{}\" }}\non_store_error = \"refuse\"\n{tls}",
            self.tls_port,
            file.display()
        )
    }

    fn trusted(&self) -> String {
        format!(
            "redis_ca_file = \"{}\"\nredis_tls_server_name = \"redis.test\"\n",
            self.ca.ca_cert.display()
        )
    }
}

fn refused_for_now(r: &Resp) {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.get("retry-after").is_some(), "503 without Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_as_an_acl_user_two_replicas_share_their_claims_and_no_credential_is_shown() {
    let t = tls_redis().await;
    let app = TestApp::start().await;
    let conf = t.toml(REDIS_USER_PASSWORD, &t.trusted());
    let a = Sidecar::start(&app, &conf).await;
    let b = Sidecar::start(&app, &conf).await;
    let d = Delivery::json();
    assert_eq!(a.send(&d).await.status, 200);
    let r = b.send(&d).await;
    assert_eq!((r.status, r.get("x-pps-duplicate")), (200, Some("true")));
    assert_eq!(app.count(), 1);
    assert_eq!(
        t.redis.keys().await.len(),
        1,
        "the claim is in the TLS server"
    );
    let ready = b.admin_get("/readyz").await;
    assert!(ready.text().contains("dedup: redis ok"), "{}", ready.text());
    for shown in [a.log(), b.log(), a.metrics().await, ready.text()] {
        assert!(!shown.contains(REDIS_USER_PASSWORD), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_that_is_untrusted_or_names_another_host_is_refused() {
    let t = tls_redis().await;
    let app = TestApp::start().await;
    // The certificate is for redis.test, not for 127.0.0.1; and the system roots do not know the test CA.
    let wrong_name = format!("redis_ca_file = \"{}\"\n", t.ca.ca_cert.display());
    let system_roots = "redis_tls_server_name = \"redis.test\"\n";
    for (tls, why) in [
        (wrong_name.as_str(), "not valid for name"),
        (system_roots, "UnknownIssuer"),
    ] {
        let s = Sidecar::start(&app, &t.toml(REDIS_USER_PASSWORD, tls)).await;
        refused_for_now(&s.send(&Delivery::json()).await);
        let ready = s.admin_get("/readyz").await;
        assert!(ready.text().contains("unreachable"), "{}", ready.text());
        let log = s.log_with("dedup: redis connect failed", 1).await;
        assert!(
            log.contains(why),
            "the log names the certificate's fault: {log}"
        );
    }
    assert_eq!(app.count(), 0, "nothing went through unchecked");
    assert!(t.redis.keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_never_written_anywhere() {
    let t = tls_redis().await;
    let app = TestApp::start().await;
    let wrong = "not-the-password-93ad";
    let s = Sidecar::start(&app, &t.toml(wrong, &t.trusted())).await;
    refused_for_now(&s.send(&Delivery::json()).await);
    let log = s.log_with("dedup: redis connect failed", 1).await;
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains("deliveries get 503 + Retry-After"), "{log}");
    assert!(
        !log.contains(wrong) && !log.contains(REDIS_USER_PASSWORD),
        "{log}"
    );
    assert!(!s.metrics().await.contains(wrong));
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_used_from_the_next_connection_without_a_restart() {
    let t = tls_redis().await;
    let app = TestApp::start().await;
    let s = Sidecar::start(&app, &t.toml(REDIS_USER_PASSWORD, &t.trusted())).await;
    assert_eq!(s.send(&Delivery::json()).await.status, 200);

    // Rotation as an operator does it: the user's password changes, its connections are closed, the
    // mounted Secret changes.
    let rotated = "orders-pw-rotated-41c2";
    let answer = t
        .redis
        .inline(&format!(
            "ACL SETUSER orders resetpass >{rotated}\r\nCLIENT KILL USER orders\r\n"
        ))
        .await
        .unwrap();
    assert!(!answer.contains("-ERR"), "{answer}");
    write_file(t.secrets.path(), "redis-password", &format!("{rotated}\n"));

    let d = Delivery::json();
    let r = poll(
        "a delivery goes through on the rotated password",
        || async {
            let r = s.send(&d).await;
            (r.status != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.count(), 2);
    let log = s.log();
    assert!(!log.contains("takes effect after a restart"), "{log}");
    assert!(!log.contains(rotated), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_mode_a_claim_redis_cannot_decide_is_answered_503_and_goes_through_once_it_is_back()
 {
    let redis = TestRedis::start(free_port()).await;
    let app = TestApp::start().await;
    let conf = format!("{}on_store_error = \"refuse\"\n", redis.toml());
    let a = Sidecar::start(&app, &conf).await;
    let b = Sidecar::start(&app, &conf).await;
    let d = Delivery::json();

    redis.pause();
    refused_for_now(&a.send(&d).await);
    refused_for_now(&b.send(&d).await);
    let ready = a.admin_get("/readyz").await;
    assert!(
        ready.text().contains("503 + Retry-After"),
        "{}",
        ready.text()
    );
    assert_eq!(app.count(), 0, "no copy went past the shared store");
    redis.resume();

    let r = poll("the retry goes through once Redis is back", || async {
        let r = a.send(&d).await;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    // The other replica leaves Redis alone for a moment after its failure: 503 until it asks again.
    let r = poll("the other replica answers from Redis again", || async {
        let r = b.send(&d).await;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!((r.status, r.get("x-pps-duplicate")), (200, Some("true")));
    assert_eq!(app.count(), 1);
}
