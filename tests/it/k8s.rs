//! The Kubernetes packaging (k8s/, the Dockerfiles): the manifests are validated by `k8s/check.py` (schemas
//! of Kubernetes 1.29 and later, and the routing, probe, mount and security rules; the kustomize components
//! rendered over a sample app by `kubectl kustomize`; k8s/monitoring's structure), and the pod's own
//! configuration, taken from the ConfigMap, drives the real binary in front of the real example app.

use std::process::Command;

use crate::common::*;

/// Runs `python3 k8s/check.py ARGS`; returns (exit code, stdout, stderr).
fn check_py(args: &[&str]) -> (i32, String, String) {
    run(Command::new("python3")
        .arg(repo_path("k8s/check.py"))
        .args(args)
        .current_dir(repo_path("")))
}

/// The `sidecar.toml` literal block of k8s/base/configmap.yaml: the file the pod sees at
/// /etc/pps-sidecar/sidecar.toml.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(repo_path("k8s/base/configmap.yaml")).unwrap();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut lines = yaml.lines();
    let key = lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("sidecar.toml:"))
        .expect("k8s/base/configmap.yaml has no sidecar.toml key");
    assert_eq!(
        key.trim(),
        "sidecar.toml: |",
        "the TOML is kept as a literal block"
    );
    let mut block = None;
    let mut out = String::new();
    let mut blanks = 0;
    for line in lines {
        if line.trim().is_empty() {
            blanks += 1;
            continue;
        }
        if indent(line) <= indent(key) {
            break;
        }
        let at = *block.get_or_insert(indent(line));
        assert!(indent(line) >= at, "badly indented TOML line: {line:?}");
        out.push_str(&"\n".repeat(blanks));
        blanks = 0;
        out.push_str(&line[at..]);
        out.push('\n');
    }
    out
}

#[test]
fn manifests_validate_and_route_webhooks_through_the_sidecar() {
    let (code, out, err) = check_py(&[]);
    assert_eq!(code, 0, "k8s/check.py failed:\n{out}\n{err}");
    // Every variant was rendered and checked, against 1.29 and the newest schemas bundled: the two complete
    // examples, and the kustomize components rendered by `kubectl kustomize` over the sample app.
    for variant in [
        "native-sidecar",
        "two-containers",
        "examples/with-sidecar",
        "examples/with-sidecar-legacy",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{variant}: ok")))
            .unwrap_or_else(|| panic!("no verdict for {variant}:\n{out}"));
        assert!(line.contains("1.29"), "{line}");
    }
    assert!(out.contains("monitoring: ok"), "{out}");
    assert!(out.contains("examples/policies: ok"), "{out}");
    assert!(out.contains("k8s manifests and Dockerfiles: ok"), "{out}");

    // The e2e test below reads the ConfigMap with a few lines of Rust: they agree with a YAML parser.
    let (code, printed, err) = check_py(&["--print-config"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed, configmap_toml());
}

#[test]
fn every_manifest_names_the_image_of_this_version() {
    // The image a manifest names is the one built from this tree (docker build -t pps-sidecar:VERSION),
    // never a moving `latest`.
    let version = env!("CARGO_PKG_VERSION");
    let mut files = vec![];
    let mut dirs = vec![repo_path("k8s")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    let mut sidecar_images = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let Some(image) = line.trim().strip_prefix("image:") else {
                continue;
            };
            let image = image.trim();
            assert!(!image.ends_with(":latest"), "{}: {image}", f.display());
            if let Some(tag) = image.strip_prefix("pps-sidecar:") {
                assert_eq!(tag, version, "{}: {image}", f.display());
                sidecar_images += 1;
            }
        }
    }
    // native-sidecar, two-containers, and the two components.
    assert_eq!(sidecar_images, 4);
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("docker build -t pps-sidecar:{version} .")),
        "the Dockerfile's build command names another tag"
    );
}

#[test]
fn manifest_checks_catch_broken_manifests() {
    // Each known way to break the pod (the Service on the app's port, a probe on the webhook port, a
    // writable root file system, a misspelt field...) is applied in memory and must be reported.
    let (code, out, err) = check_py(&["--self-test"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let caught: usize = out
        .trim()
        .strip_prefix("self-test: ")
        .and_then(|s| s.strip_suffix(" breaks caught"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {out}"));
    assert!(caught >= 100, "{out}");
}

// ---- the pod on loopback ----------------------------------------------------------------------

/// Replaces the pod's value at `path` by this machine's, checking first that the manifest still says what
/// the mapping expects.
fn remap(conf: &mut toml::Table, path: &[&str], pod: &str, here: String) {
    let (last, tables) = path.split_last().unwrap();
    let mut t = conf;
    for k in tables {
        t = t.get_mut(*k).and_then(|v| v.as_table_mut()).unwrap();
    }
    assert_eq!(
        t.get(*last).and_then(|v| v.as_str()),
        Some(pod),
        "the ConfigMap's {} is no longer {pod}: update the mapping here and in k8s/README.md",
        path.join(".")
    );
    t.insert(last.to_string(), toml::Value::String(here));
}

/// The pod's configuration, the ConfigMap's `sidecar.toml`, mapped to loopback as k8s/README.md describes:
/// the sidecar's 0.0.0.0:8080 and 0.0.0.0:9090 and the app's 127.0.0.1:3000 become the given addresses,
/// the Secret mounted at /etc/pps-sidecar/secrets/hmac becomes `dir/secrets/hmac` (holding the test
/// secret, as `kubectl create secret generic pps-webhook-secret --from-literal=hmac=...` stores it), the
/// spool's emptyDir a folder in `dir`. Nothing else changes. Returns the file written.
pub(crate) fn pod_config(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    app: std::net::SocketAddr,
) -> std::path::PathBuf {
    let secret_file = dir.join("secrets").join("hmac");
    std::fs::create_dir_all(secret_file.parent().unwrap()).unwrap();
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut conf: toml::Table = configmap_toml().parse().expect("the ConfigMap's TOML");
    for (path, pod, here) in [
        (&["server", "listen"], "0.0.0.0:8080", listen),
        (&["server", "admin_listen"], "0.0.0.0:9090", admin),
        (&["upstream", "address"], "127.0.0.1:3000", app),
    ] {
        remap(&mut conf, path, pod, here.to_string());
    }
    let secrets = conf["auth"]["hmac"]["secrets"].as_array_mut().unwrap();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let secret = secrets[0].as_table_mut().unwrap();
    assert_eq!(secret.len(), 1, "{secret:?}");
    let file = secret_file.to_str().unwrap().to_string();
    remap(secret, &["file"], "/etc/pps-sidecar/secrets/hmac", file);
    let spool = dir.join("spool").to_str().unwrap().to_string();
    remap(
        &mut conf,
        &["spool", "dir"],
        "/var/spool/pps-sidecar",
        spool,
    );
    let config = dir.join("sidecar.toml");
    std::fs::write(&config, toml::to_string(&conf).unwrap()).unwrap();
    config
}

#[tokio::test]
async fn pod_config_from_the_configmap_processes_signed_forged_and_duplicate_deliveries() {
    let dir = tempfile::tempdir().unwrap();

    // The pod, mapped to loopback as k8s/README.md describes: the sidecar's 0.0.0.0:8080 and 0.0.0.0:9090
    // and the app's 127.0.0.1:3000 become free loopback ports, and the Secret mounted at
    // /etc/pps-sidecar/secrets/hmac becomes a file in a temporary folder, the spool a folder in it.
    // Nothing else changes.
    let [listen, admin, app] = free_addrs();
    let config = pod_config(dir.path(), listen, admin, app);

    let (code, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(
        code, 0,
        "pps-sidecar check refuses the pod's config:\n{out}{err}"
    );

    // The example app, as its image runs it (APP_LISTEN, as the Deployment sets it), and the sidecar, as
    // the Deployment runs it.
    let app_proc = Proc::spawn(
        "legacy-app",
        Command::new("python3")
            .arg(repo_path("examples/legacy-app/app.py"))
            .env("APP_LISTEN", app.to_string())
            .env("PYTHONUNBUFFERED", "1"),
        dir.path(),
    );
    let sidecar = Proc::spawn(
        "pps-sidecar",
        run_command(&config).env_remove("PPS_WEBHOOK_SECRET"),
        dir.path(),
    );

    // What the readiness probe waits for: /readyz says 200 once the config is loaded and the app accepts
    // connections.
    poll("the pod is ready", || async {
        app_proc.assert_running();
        sidecar.assert_running();
        serving(admin, "/readyz", listen).await.then_some(())
    })
    .await;
    let health = get(admin, "/healthz").await.unwrap();
    assert_eq!(health.status, 200, "liveness: {}", health.text());

    // A signed delivery: processed by the app.
    let signed = Delivery::json();
    let r = send(listen, &signed.bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"ok\": true"),
        "the app's answer: {}",
        r.text()
    );
    assert_eq!(r.get("X-Pps-Duplicate"), None);
    let line = format!("processed orders/placed id={}", signed.id());
    let out = app_proc.output_with(&line, 1).await;
    let processed = out.lines().find(|l| l.contains(&line)).unwrap();
    assert!(processed.contains("tenant=OU1243"), "{processed}");
    assert!(processed.contains("verified=hmac"), "{processed}");
    assert!(
        processed.contains("at=2024-01-01T10:00:00.7777748Z"),
        "{processed}"
    );

    // A forged delivery: refused, the app never sees it.
    let forged = Delivery::json().sign_with("not-the-secret");
    let r = send(listen, &forged.bytes()).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // The same signed delivery again: answered from the cache.
    let r = send(listen, &signed.bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.get("X-Pps-Duplicate"), Some("true"));

    // The app, asked directly on its loopback port, saw exactly one delivery.
    let orders = get(app, "/orders").await.expect("the app answers");
    assert_eq!(orders.text().trim(), r#"{"orders": 1}"#);
    let out = app_proc.output();
    assert_eq!(out.matches("processed ").count(), 1, "{out}");
    assert!(!out.contains(&forged.id()), "{out}");

    // And the metrics Prometheus scrapes (the pod's annotations: admin port, /metrics) count all three.
    // Counted just after each answer is written: poll until all three are in.
    eventually("the metrics count all three", || async {
        let Some(m) = get(admin, "/metrics").await else {
            return false;
        };
        let m = m.text();
        [
            ("forwarded", 1.0),
            ("unauthorized", 1.0),
            ("duplicate", 1.0),
        ]
        .iter()
        .all(|(outcome, n)| {
            metric(
                &m,
                &format!("pps_sidecar_requests_total{{outcome=\"{outcome}\"}}"),
            ) == *n
        })
    })
    .await;
    sidecar.assert_running();
}
