//! Every command k8s/README.md and README.md tell an operator to type, tried as written: the ones that run
//! in the sidecar's container (`kubectl exec ... -- pps-sidecar ...`) against the real binary with the
//! container's own environment from the manifest (`PPS_SIDECAR_CONFIG`: no `--config` needed), the log
//! greps against real log lines of the real binary, the Secret commands with `kubectl` on its own
//! (`--dry-run=client`, `--local`), the renders with `kubectl kustomize`, `inject` with the output the
//! README shows. What needs a live cluster or a registry is listed below with the reason; a command that is
//! neither tried nor listed fails the test, so a new one cannot slip in untried.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::inject::run_with_stdin;
use crate::k8s::pod_config;

/// Commands that only a cluster (or a registry) can answer, by prefix, with why.
const CLUSTER_ONLY: &[(&str, &str)] = &[
    ("kubectl rollout ", "waits for a rollout in a cluster"),
    (
        "kubectl port-forward ",
        "forwards from a cluster; the curl after it is tried on the admin port",
    ),
    ("kubectl get ", "reads a cluster's objects"),
    ("kubectl describe ", "reads a cluster's objects"),
    (
        "docker ",
        "builds and pushes images (k8s/check.py checks the Dockerfile)",
    ),
    ("examples/demo.sh", "the demo, run on its own"),
    (".ci/test", "the test suite itself"),
    (
        "pps-sidecar run ",
        "how the pod starts the sidecar: this test starts it so",
    ),
];

/// The log lines of `kubectl logs <pod> ...` without a grep: a pod's log, nothing to try offline.
fn is_plain_log(cmd: &str) -> bool {
    cmd.starts_with("kubectl logs ") && !cmd.contains("| grep")
}

/// The commands of the ```sh blocks (continuation lines joined, trailing comments dropped) and the
/// `kubectl ...` spans of the text, with the file they come from.
fn commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["k8s/README.md", "README.md"] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("```sh\n") {
            let body_start = at + "```sh\n".len();
            let len = rest[body_start..].find("```").unwrap();
            let body = rest[body_start..body_start + len].replace("\\\n", " ");
            for line in body.lines() {
                let cmd = strip_comment(line);
                if !cmd.is_empty() {
                    out.push((file.to_string(), cmd));
                }
            }
            rest = &rest[body_start + len + 3..];
        }
        // Inline: `kubectl ...` spans (they may wrap), but not bare mentions (`kubectl exec`) or
        // abbreviations (`kubectl exec ... -- ...`).
        for (i, span) in text.split('`').enumerate() {
            let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
            if i % 2 == 1
                && span.starts_with("kubectl ")
                && span.split(' ').count() > 3
                && !span.contains("...")
                && !span.contains('\n')
            {
                out.push((file.to_string(), span));
            }
        }
    }
    out
}

/// The command without a trailing `# comment` (a `#` outside quotes after a space).
fn strip_comment(line: &str) -> String {
    let mut quote = None;
    let b = line.as_bytes();
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i > 0 && b[i - 1] == b' ' => return line[..i].trim().to_string(),
            _ => {}
        }
    }
    line.trim().to_string()
}

/// Splits a command line into words: whitespace-separated, single and double quotes grouping.
fn words(cmd: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in cmd.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The pod, on loopback, as k8s/README.md's end-to-end mapping puts it: the ConfigMap's configuration,
/// the Secret's files (with `hmac-next`, as during a rotation), the spool, the app, the sidecar started
/// as the manifest starts it, and a copy of k8s/ to render.
struct Pod {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin: SocketAddr,
    listen: SocketAddr,
    app: TestApp,
    sidecar: Proc,
    /// `PPS_SIDECAR_CONFIG` as the manifests set it.
    config_env: String,
}

impl Pod {
    async fn start() -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let [listen, admin] = free_addrs();
        let app = TestApp::start().await;
        let config = pod_config(dir.path(), listen, admin, app.addr);
        // During a rotation the Secret also holds `hmac-next` (k8s/README.md, "Rotating it").
        std::fs::write(dir.path().join("secrets/hmac-next"), "the-next-secret").unwrap();

        // The sidecar container's environment, from the manifest: the config path exec'd commands read.
        let manifest =
            std::fs::read_to_string(repo_path("k8s/native-sidecar/deployment.yaml")).unwrap();
        let doc = pps_sidecar::inject::yaml::parse(&manifest)
            .unwrap()
            .unwrap();
        let side = doc
            .at(&["spec", "template", "spec", "initContainers"])
            .unwrap()
            .items()[0]
            .clone();
        let config_env = side
            .get("env")
            .unwrap()
            .items()
            .iter()
            .find(|v| v.get("name").and_then(|n| n.as_str()) == Some("PPS_SIDECAR_CONFIG"))
            .and_then(|v| v.get("value")?.as_str().map(str::to_string))
            .expect("the sidecar container sets PPS_SIDECAR_CONFIG");
        assert_eq!(config_env, "/etc/pps-sidecar/sidecar.toml");

        let sidecar = Proc::spawn("pps-sidecar", &mut run_command(&config), dir.path());
        poll("the pod is ready", || async {
            sidecar.assert_running();
            serving(admin, "/readyz", listen).await.then_some(())
        })
        .await;
        Pod {
            dir,
            config,
            admin,
            listen,
            app,
            sidecar,
            config_env,
        }
    }

    /// A path in the pod, in this test's folder.
    fn local(&self, pod_path: &str) -> String {
        match pod_path.strip_prefix("/etc/pps-sidecar/") {
            Some("sidecar.toml") => self.config.to_str().unwrap().to_string(),
            Some(rest) => self.dir.path().join(rest).to_str().unwrap().to_string(),
            None => pod_path.to_string(),
        }
    }

    /// Runs `pps-sidecar ARGS` as `kubectl exec` runs it in the container: its environment, no --config.
    fn exec(&self, args: &[String], stdin: &str) -> (i32, String, String) {
        run_with_stdin(
            Command::new(binary())
                .args(args.iter().map(|a| self.local(a)))
                .env("PPS_SIDECAR_CONFIG", self.local(&self.config_env))
                .env("RUST_LOG", "info")
                .env_remove("PPS_WEBHOOK_SECRET"),
            stdin,
        )
    }

    /// The id of the newest spool entry, spooling one (the app refusing with 404) if there is none.
    async fn spooled_id(&self) -> String {
        let list = |p: &Pod| p.exec(&["spool".into(), "list".into()], "").1;
        if list(self).trim().is_empty() {
            self.app.set(Behaviour::Answer(404));
            assert_eq!(
                send(self.listen, &Delivery::json().bytes()).await.status,
                404
            );
            self.app.set(Behaviour::Answer(200));
        }
        let out = list(self);
        out.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

/// `kubectl ARGS` offline; (code, stdout, stderr).
fn kubectl(args: &[String], dir: &Path) -> (i32, String, String) {
    run(Command::new("kubectl").args(args).current_dir(dir))
}

/// A copy of the repository's k8s/ under `root`, as a user's checkout (the examples' secrets absent).
fn checkout(root: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_name() == "hmac" {
                continue;
            }
            let t = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &t);
            } else {
                std::fs::copy(e.path(), t).unwrap();
            }
        }
    }
    copy(&repo_path("k8s"), &root.join("k8s"));
    for ex in ["with-sidecar", "with-sidecar-legacy"] {
        let path = root.join("k8s/examples").join(ex).join("hmac");
        let (code, _, err) = run(Command::new("sh")
            .arg("-c")
            .arg("openssl rand -hex 32 > \"$1\"")
            .args(["sh", path.to_str().unwrap()]));
        assert_eq!(code, 0, "{err}");
    }
}

/// Runs `cmd` with `sh -c` in `dir`, the binary under test first on PATH.
fn shell(cmd: &str, dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = Path::new(binary()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().copied()))
}

/// The ``` block that follows `marker` in k8s/README.md.
fn readme_block_after(marker: &str) -> String {
    let text = std::fs::read_to_string(repo_path("k8s/README.md")).unwrap();
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("k8s/README.md has no {marker:?}"));
    let start = at + text[at..].find("```\n").unwrap() + 4;
    let len = text[start..].find("```").unwrap();
    text[start..start + len].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_readmes_give_runs_as_written() {
    let pod = Pod::start().await;
    let root = tempfile::tempdir().unwrap();
    checkout(root.path());
    let here = root.path();

    // Log lines to grep: a forwarded delivery, a forged one (403), an app that fails (502), and a
    // refused reload (the sidecar keeps serving).
    let signed = Delivery::json();
    assert_eq!(send(pod.listen, &signed.bytes()).await.status, 200);
    let forged = Delivery::json().sign_with("not-the-secret");
    assert_eq!(send(pod.listen, &forged.bytes()).await.status, 403);
    pod.app.set(Behaviour::Close);
    assert_eq!(
        send(pod.listen, &Delivery::json().bytes()).await.status,
        502
    );
    pod.app.set(Behaviour::Answer(200));
    let good = std::fs::read_to_string(&pod.config).unwrap();
    std::fs::write(&pod.config, format!("{good}\n[dedup]\nttl_secondz = 1\n")).unwrap();
    pod.sidecar.output_with("refused", 1).await;
    std::fs::write(&pod.config, &good).unwrap();
    pod.sidecar.output_with("configuration reloaded", 1).await;
    pod.sidecar.output_with("outcome=upstream_error", 1).await;
    let log = pod.dir.path().join("pps-sidecar.log");

    let mut tried = Vec::new();
    let mut cluster = Vec::new();
    for (file, cmd) in commands() {
        let what = format!("{file}: {cmd}");
        if let Some((_, why)) = CLUSTER_ONLY.iter().find(|(p, _)| cmd.starts_with(p)) {
            cluster.push(format!("{cmd}  ({why})"));
            continue;
        }
        if is_plain_log(&cmd) || cmd.starts_with("kubectl get deploy") {
            cluster.push(format!("{cmd}  (a cluster's log)"));
            continue;
        }
        try_one(&pod, here, &log, &signed, &cmd, &what).await;
        tried.push(cmd);
    }
    eprintln!(
        "tried {} commands; {} need a cluster:\n  {}",
        tried.len(),
        cluster.len(),
        cluster.join("\n  ")
    );
    // The README's own runbooks: every kind of command is there.
    for needle in [
        "kubectl exec deploy/legacy-app -c pps-sidecar -- pps-sidecar spool list",
        "grep 'status=403'",
        "grep 'webhook_id=\"<id>\"'",
        "kubectl patch secret",
        "pps-sidecar inject -",
    ] {
        assert!(
            tried.iter().any(|c| c.contains(needle)),
            "never tried: {needle}"
        );
    }
    assert!(tried.len() >= 25, "{tried:#?}");
    pod.sidecar.assert_running();
}

/// Tries one command; panics with `what` when it does not do what the README says.
async fn try_one(pod: &Pod, here: &Path, log: &Path, signed: &Delivery, cmd: &str, what: &str) {
    let w = words(cmd);
    if let Some(at) = cmd.find(" -- ").filter(|_| cmd.contains("kubectl exec ")) {
        // In the sidecar's container, with its environment.
        let stdin = if cmd.starts_with("echo '{}' |") {
            "{}\n"
        } else {
            ""
        };
        let mut args = words(&cmd[at + 4..]);
        assert!(args[0].ends_with("pps-sidecar"), "{what}");
        args.remove(0);
        let is_spool_id = args.first().is_some_and(|a| a == "spool")
            && args.iter().any(|a| a == "ID" || a == "ID...");
        if is_spool_id {
            let id = pod.spooled_id().await;
            for a in &mut args {
                if a == "ID" || a == "ID..." {
                    *a = id.clone();
                }
            }
        }
        if args.starts_with(&["spool".into(), "replay".into()]) {
            pod.spooled_id().await;
        }
        let (code, out, err) = pod.exec(&args, stdin);
        assert_eq!(code, 0, "{what}:\n{out}{err}");
        if args.starts_with(&["spool".into(), "replay".into()]) {
            assert!(out.contains("delivered"), "{what}: {out}");
        }
        if args.first().is_some_and(|a| a == "sign") {
            assert!(out.contains("X-Pps-Hmac-Sha256: "), "{what}: {out}");
        }
        return;
    }
    if cmd.starts_with("kubectl logs ") {
        // The grep part, on the real log.
        let pattern = cmd.split("grep ").nth(1).expect(what);
        let pattern = words(pattern)[0].replace("<id>", &signed.id());
        let (code, out, _) = run(Command::new("grep").arg("--").arg(&pattern).arg(log));
        assert_eq!(code, 0, "{what}: no log line matches {pattern:?}");
        if pattern.contains("webhook_id") {
            assert!(
                out.lines().all(|l| l.contains(&signed.id())),
                "{what}: {out}"
            );
            assert!(out.contains("outcome=forwarded"), "{what}: {out}");
        }
        if pattern == "status=403" {
            assert!(out.contains("auth_failure=bad_signature"), "{what}: {out}");
        }
        return;
    }
    if cmd.starts_with("kubectl create secret generic ") {
        let mut args = w[1..].to_vec();
        args.extend(["--dry-run=client".into(), "-o".into(), "yaml".into()]);
        let (code, out, err) = kubectl(&args, here);
        assert_eq!(code, 0, "{what}: {err}");
        // The key the manifests mount from that Secret.
        let key = if cmd.contains(" pps-redis ") {
            "password: "
        } else {
            "hmac: "
        };
        assert!(
            out.contains("kind: Secret") && out.contains(key),
            "{what}: {out}"
        );
        return;
    }
    if cmd.starts_with("kubectl patch secret pps-webhook-secret ") {
        // On a Secret as `kubectl create secret` makes it, both keys present.
        let base = here.join("secret.yaml");
        let (_, yaml, _) = kubectl(
            &words(
                "create secret generic pps-webhook-secret --from-literal=hmac=a --from-literal=hmac-next=b --dry-run=client -o yaml",
            ),
            here,
        );
        std::fs::write(&base, yaml).unwrap();
        let mut args = vec!["patch".to_string(), "--local".into(), "-f".into()];
        args.push(base.to_str().unwrap().into());
        args.extend(w[4..].iter().cloned());
        args.extend(["-o".into(), "yaml".into()]);
        let (code, out, err) = kubectl(&args, here);
        assert_eq!(code, 0, "{what}: {err}");
        if cmd.contains("remove") {
            assert!(!out.contains("hmac-next"), "{what}: {out}");
        } else {
            assert!(out.contains("stringData:"), "{what}: {out}");
        }
        return;
    }
    if cmd.starts_with("kubectl apply -k ") || cmd.starts_with("kubectl kustomize ") {
        let at = w
            .iter()
            .position(|x| x == "-k" || x == "kustomize")
            .unwrap();
        let (code, out, err) = kubectl(&["kustomize".into(), w[at + 1].clone()], here);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(out.contains("kind: "), "{what}");
        return;
    }
    if cmd.starts_with("openssl rand ") {
        let (code, _, err) = shell(cmd, here, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        return;
    }
    if cmd.starts_with("curl ") {
        let local = cmd.replace("localhost:9090", &pod.admin.to_string());
        let (code, out, err) = shell(&local, here, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(!out.trim().is_empty(), "{what}");
        return;
    }
    if cmd.starts_with("kubectl kustomize k8s/examples/existing-app | pps-sidecar inject -") {
        let (code, out, err) = shell(cmd, here, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(out.is_empty(), "written to the file");
        // What the README shows it prints, exactly.
        assert_eq!(
            err,
            readme_block_after("prints on standard error"),
            "{what}"
        );
        return;
    }
    if cmd.starts_with("pps-sidecar inject deploy.yaml | kubectl apply -f -") {
        let (_, existing, _) = kubectl(&words("kustomize k8s/examples/existing-app"), here);
        std::fs::write(here.join("deploy.yaml"), existing).unwrap();
        // `kubectl apply` needs a cluster: the same documents, validated strictly against its schemas.
        let check = format!(
            "python3 {} --validate /dev/stdin",
            repo_path("k8s/check.py").display()
        );
        let dry = cmd.replace("kubectl apply -f -", &check);
        let (code, out, err) = shell(&dry, here, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(out.contains("2 documents valid"), "{what}: {out}");
        return;
    }
    if cmd.starts_with("pps-sidecar ") {
        // The main README's, on this machine: the pod's configuration as `sidecar.toml`.
        std::fs::copy(&pod.config, here.join("sidecar.toml")).unwrap();
        std::fs::write(here.join("order.json"), r#"{"order":{"id":1}}"#).unwrap();
        let local = cmd.replace("localhost:8080", &pod.listen.to_string());
        let (code, out, err) = shell(&local, here, &[("PPS_WEBHOOK_SECRET", SECRET)]);
        assert_eq!(code, 0, "{what}:\n{out}{err}");
        if cmd.contains(" --url ") {
            // The curl command it prints delivers, signed.
            let (code, answer, err) = shell(&out, here, &[]);
            assert_eq!(code, 0, "{what}: {err}");
            assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer}");
        }
        return;
    }
    panic!("{what}: neither tried by this test nor listed as needing a cluster");
}
