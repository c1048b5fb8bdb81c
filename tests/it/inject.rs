//! `pps-sidecar inject`, the real binary, over manifests shaped like the ones teams deploy: the pod it
//! renders is the kustomize Component's (rendered by `kubectl kustomize`), only the Services and ports
//! that reached the app are repointed, what it does not change comes out byte for byte, collisions and
//! mixed Services are refused with a message, and a missing Secret is reported, never invented.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pps_sidecar::inject::yaml::{self, Node, Style};
use serde_json::Value;

use crate::common::*;

/// Runs `cmd` to completion with `input` on its standard input: (exit code, stdout, stderr).
pub(crate) fn run_with_stdin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `pps-sidecar inject ARGS` with `input` on stdin.
fn inject(args: &[&str], input: &str) -> (i32, String, String) {
    run_with_stdin(Command::new(binary()).arg("inject").args(args), input)
}

fn inject_ok(args: &[&str], input: &str) -> (String, String) {
    let (code, out, err) = inject(args, input);
    assert_eq!(code, 0, "inject refused:\n{err}");
    (out, err)
}

/// A node as JSON, scalars resolved as Kubernetes reads these manifests (plain numbers and booleans).
fn json(n: &Node) -> Value {
    match n {
        Node::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), json(v))).collect()),
        Node::Seq(s) => Value::Array(s.iter().map(json).collect()),
        Node::Scalar(s) if s.style == Style::Plain => match s.value.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "" | "~" | "null" => Value::Null,
            v => v
                .parse::<i64>()
                .map_or_else(|_| Value::from(v), Value::from),
        },
        Node::Scalar(s) => Value::from(s.value.as_str()),
    }
}

fn docs(text: &str) -> Vec<Value> {
    yaml::split_documents(text)
        .into_iter()
        .filter_map(|d| yaml::parse(d).unwrap())
        .map(|n| json(&n))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `kubectl kustomize k8s/DIR` over a copy of k8s/ whose examples have the `hmac` file they generate
/// their Secret from (k8s/README.md tells a user to make it; it is never committed).
fn kustomize(dir: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("k8s");
    copy_tree(&repo_path("k8s"), &root);
    for ex in ["with-sidecar", "with-sidecar-legacy"] {
        std::fs::write(root.join("examples").join(ex).join("hmac"), "test-secret").unwrap();
    }
    let (code, out, err) = run(Command::new("kubectl").arg("kustomize").arg(root.join(dir)));
    assert_eq!(code, 0, "kubectl kustomize {dir}: {err}");
    out
}

#[test]
fn inject_renders_the_same_pod_and_service_as_the_kustomize_component() {
    let existing = kustomize("examples/existing-app");
    for (example, args) in [
        ("examples/with-sidecar", &[][..]),
        ("examples/with-sidecar-legacy", &["--legacy"][..]),
    ] {
        let component = docs(&kustomize(example));
        let (out, _) = inject_ok(args, &existing);
        let injected = docs(&out);
        for (kind, name) in [("Deployment", "orders"), ("Service", "orders")] {
            assert_eq!(
                find(&injected, kind, name),
                find(&component, kind, name),
                "{example}: {kind}/{name} differs between inject {args:?} and the Component"
            );
        }
        // And neither brings a Secret of its own: the example generates one from an ignored file.
        assert!(!injected.iter().any(|d| d["kind"] == "Secret"), "{out}");
    }
}

/// A team's manifest: comments, a ConfigMap of the app's, a Deployment with two containers, an init
/// container, named ports, volumes of its own and probes of each kind, an opted-out StatefulSet, and
/// Services (one with two ports).
const SHOP: &str = r#"# The shop, as deployed today.
apiVersion: v1
kind: ConfigMap
metadata:
  name: orders-settings   # the app's own settings
  namespace: shop
data:
  mode: "0644"
  LOG: "on"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  namespace: shop
  labels: {app: orders}
spec:
  replicas: 2
  selector:
    matchLabels: {app: orders, tier: web}
  template:
    metadata:
      labels: {app: orders, tier: web}
      annotations:
        team: checkout
    spec:
      initContainers:
        - name: migrate
          image: registry.example.com/orders-migrate:4.2
          args: [migrate, --to, latest]
      containers:
        - name: app
          image: registry.example.com/orders:4.2
          ports:
            - name: http
              containerPort: 3000
            - name: metrics
              containerPort: 9100
          livenessProbe:
            httpGet:
              path: /live
              port: http
              httpHeaders:
                - name: Host
                  value: orders.internal
            timeoutSeconds: 2
          readinessProbe:
            tcpSocket:
              port: 3000
            periodSeconds: 5
          startupProbe:
            httpGet:
              path: /started
              port: 3000
            failureThreshold: 30
          volumeMounts:
            - name: cache
              mountPath: /cache
            - name: settings
              mountPath: /etc/orders
        - name: worker
          image: registry.example.com/orders-worker:4.2
          livenessProbe:
            exec:
              command: [/bin/check]
      volumes:
        - name: cache
          emptyDir: {}
        - name: settings
          configMap:
            name: orders-settings
            defaultMode: 0644
---
apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: shop
spec:
  selector: {app: orders}
  ports:
    - name: http
      port: 80
      targetPort: http
    - name: metrics
      port: 9100
      targetPort: metrics
---
# The admin UI: not for Pitchpoint, left alone.
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: admin-ui
  namespace: shop
  annotations:
    pps-sidecar.io/inject: "false"
spec:
  serviceName: admin-ui
  selector:
    matchLabels: {app: admin-ui}
  template:
    metadata:
      labels: {app: admin-ui}
    spec:
      containers:
        - name: ui
          image: registry.example.com/admin-ui:1.0
          ports:
            - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: admin-ui
  namespace: shop
spec:
  selector: {app: admin-ui}
  ports:
    - port: 80
      targetPort: 8080
"#;

#[test]
fn a_real_world_manifest_gets_the_sidecar_and_keeps_everything_else() {
    // The Service has two ports: which one reaches the app must be named.
    let (code, out, err) = inject(&[], SHOP);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "nothing to apply on a refusal: {out}");
    assert!(
        err.contains("service/orders (namespace shop) has 2 ports") && err.contains("--app-port"),
        "{err}"
    );

    let (out, notes) = inject_ok(&["--app-port", "http"], SHOP);
    // What inject does not change is byte for byte what came in: the ConfigMap (its "0644" and `on`
    // untouched), the opted-out StatefulSet and its Service, with their comments.
    let pieces = yaml::split_documents(SHOP);
    for unchanged in [0, 3, 4] {
        assert!(
            out.contains(pieces[unchanged]),
            "document {unchanged} changed:\n{out}"
        );
    }
    let d = docs(&out);
    assert_eq!(d.len(), 5);
    let pod = &find(&d, "Deployment", "orders")["spec"]["template"];
    let spec = &pod["spec"];
    let names = |list: &str| -> Vec<&str> {
        spec[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(names("initContainers"), ["pps-sidecar", "migrate"]);
    assert_eq!(names("containers"), ["app", "worker"]);
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        ["pps-sidecar-spool", "pps-sidecar", "cache", "settings"]
    );
    // defaultMode 0644 is written as it was, so Kubernetes still reads it as octal.
    assert!(out.contains("defaultMode: 0644\n"), "{out}");
    assert_eq!(pod["metadata"]["labels"]["pps-sidecar.io/injected"], "true");
    assert_eq!(pod["metadata"]["annotations"]["team"], "checkout");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9090");

    // The app's three probes go through the admin port; the worker's exec probe stays.
    let app = &spec["containers"][0];
    for (field, kind) in [
        ("livenessProbe", "liveness"),
        ("readinessProbe", "readiness"),
        ("startupProbe", "startup"),
    ] {
        let get = &app[field]["httpGet"];
        assert_eq!(get["path"], format!("/app-probe/app/{kind}"), "{field}");
        assert_eq!(get["port"], 9090, "{field}");
        assert!(app[field].get("tcpSocket").is_none());
    }
    assert_eq!(app["livenessProbe"]["timeoutSeconds"], 2);
    assert_eq!(app["readinessProbe"]["periodSeconds"], 5);
    assert_eq!(app["startupProbe"]["failureThreshold"], 30);
    assert_eq!(
        spec["containers"][1]["livenessProbe"]["exec"]["command"][0],
        "/bin/check"
    );
    // ...and are recorded for the admin listener, in the form it reads.
    let env = spec["initContainers"][0]["env"].as_array().unwrap();
    let record = env
        .iter()
        .find(|v| v["name"] == "PPS_SIDECAR_APP_PROBES")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    let probes = pps_sidecar::admin::probe::parse(record).unwrap();
    let live = probes["/app-probe/app/liveness"].http_get.as_ref().unwrap();
    assert_eq!((live.path.as_str(), live.port), ("/live", 3000));
    assert_eq!(live.http_headers[0].value, "orders.internal");
    assert_eq!(
        probes["/app-probe/app/readiness"]
            .tcp_socket
            .as_ref()
            .unwrap()
            .port,
        3000
    );
    assert_eq!(
        probes["/app-probe/app/startup"]
            .http_get
            .as_ref()
            .unwrap()
            .path,
        "/started"
    );

    // Only the Service port that reached the app moves to the sidecar.
    let svc = find(&d, "Service", "orders");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhooks");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], "metrics");

    // The Secret is reported with the command that makes it, never written; so is the ConfigMap.
    assert!(
        notes.contains(
            "kubectl create secret generic pps-webhook-secret -n shop --from-literal=hmac="
        ),
        "{notes}"
    );
    assert!(
        notes.contains("upstream.address = \"127.0.0.1:3000\""),
        "{notes}"
    );
    assert!(
        notes.contains("statefulset/admin-ui (namespace shop): left alone"),
        "{notes}"
    );
    assert!(!out.contains("kind: Secret"), "{out}");

    // Kubernetes' own schemas accept every document (strict: unknown fields are errors).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &out).unwrap();
    let (code, stdout, err) = run(Command::new("python3")
        .arg(repo_path("k8s/check.py"))
        .arg("--validate")
        .arg(file.path()));
    assert_eq!(code, 0, "{stdout}{err}\n{out}");

    // Injecting again changes nothing: the sidecar is already there.
    let (again, notes) = inject_ok(&["--app-port", "http"], &out);
    assert_eq!(again, out);
    assert!(
        notes.contains("deployment/orders (namespace shop): already has the sidecar"),
        "{notes}"
    );
}

const ONE_APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: app
          image: api:1
          ports:
            - name: web
              containerPort: 8080
            - name: debug
              containerPort: 9090
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector: {app: api}
  ports:
    - port: 80
      targetPort: web
";

#[test]
fn ports_that_collide_with_the_apps_are_refused_and_other_ones_can_be_chosen() {
    let (code, out, err) = inject(&[], ONE_APP);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty());
    assert!(
        err.contains("the sidecar's webhooks port 8080 is the app's own port"),
        "{err}"
    );
    assert!(
        err.contains("the sidecar's admin port 9090 is taken by container \"app\""),
        "{err}"
    );
    assert!(err.contains("--webhook-port and --admin-port"), "{err}");

    let (out, _) = inject_ok(
        &["--webhook-port", "18080", "--admin-port", "19090"],
        ONE_APP,
    );
    let d = docs(&out);
    let pod = &find(&d, "Deployment", "api")["spec"]["template"];
    let side = &pod["spec"]["initContainers"][0];
    assert_eq!(side["ports"][0]["containerPort"], 18080);
    assert_eq!(side["ports"][1]["containerPort"], 19090);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "19090"
    );
    assert_eq!(
        find(&d, "Service", "api")["spec"]["ports"][0]["targetPort"],
        "webhooks"
    );
}

#[test]
fn a_configmap_in_the_input_must_name_the_ports_of_the_pod() {
    let cm = |address: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pps-sidecar-config\ndata:\n  sidecar.toml: |\n    [server]\n    listen = \"0.0.0.0:18080\"\n    admin_listen = \"0.0.0.0:19090\"\n    [upstream]\n    address = \"{address}\"\n---\n"
        )
    };
    let args = ["--webhook-port", "18080", "--admin-port", "19090"];
    let (code, _, err) = inject(&args, &format!("{}{ONE_APP}", cm("127.0.0.1:3000")));
    assert_eq!(code, 1);
    assert!(
        err.contains("upstream.address is \"127.0.0.1:3000\", but this pod needs 127.0.0.1:8080"),
        "{err}"
    );
    let input = format!("{}{ONE_APP}", cm("127.0.0.1:8080"));
    let (out, notes) = inject_ok(&args, &input);
    assert!(
        out.starts_with(&cm("127.0.0.1:8080")),
        "the ConfigMap is kept as it is"
    );
    assert!(!notes.contains("ConfigMap"), "{notes}");
}

#[test]
fn a_secret_in_the_input_is_kept_and_none_is_ever_made_up() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: pps-webhook-secret\ntype: Opaque\ndata:\n  hmac: c2VjcmV0\n---\n";
    let input = format!("{secret}{ONE_APP}");
    let (out, notes) = inject_ok(
        &["--webhook-port", "18080", "--admin-port", "19090"],
        &input,
    );
    assert!(out.starts_with(secret), "{out}");
    assert_eq!(out.matches("kind: Secret").count(), 1);
    assert!(!notes.contains("kubectl create secret"), "{notes}");
}

#[test]
fn a_service_that_also_selects_an_opted_out_workload_is_refused() {
    let input = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: new
spec:
  selector: {matchLabels: {app: shop, v: new}}
  template:
    metadata: {labels: {app: shop, v: new}}
    spec:
      containers: [{name: app, image: a:1, ports: [{name: http, containerPort: 3000}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: old
  annotations: {pps-sidecar.io/inject: \"false\"}
spec:
  selector: {matchLabels: {app: shop, v: old}}
  template:
    metadata: {labels: {app: shop, v: old}}
    spec:
      containers: [{name: app, image: a:1, ports: [{name: http, containerPort: 3000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{port: 80, targetPort: http}]
";
    let (code, out, err) = inject(&[], input);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(
            "service/shop selects deployment/new (to be injected) and deployment/old (left alone)"
        ),
        "{err}"
    );
}

#[test]
fn kubectl_get_lists_and_pods_are_injected_too() {
    // What `kubectl get deploy,svc -o yaml` prints: one List.
    let list = "apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: api
  spec:
    selector:
      matchLabels:
        app: api
    template:
      metadata:
        labels:
          app: api
      spec:
        containers:
        - name: app
          image: api:1
          ports:
          - containerPort: 3000
- apiVersion: v1
  kind: Service
  metadata:
    name: api
  spec:
    selector:
      app: api
    ports:
    - port: 80
      targetPort: 3000
";
    let (out, _) = inject_ok(&[], list);
    let d = docs(&out);
    let items = d[0]["items"].as_array().unwrap();
    assert_eq!(
        items[0]["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "pps-sidecar"
    );
    assert_eq!(items[1]["spec"]["ports"][0]["targetPort"], "webhooks");

    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: a:1\n    ports:\n    - containerPort: 3000\n";
    let (out, _) = inject_ok(&["--legacy"], pod);
    let d = docs(&out);
    let names: Vec<&str> = d[0]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pps-sidecar", "app"]);
}

#[test]
fn a_file_argument_works_like_standard_input_and_bad_yaml_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.yaml");
    std::fs::write(&f, ONE_APP).unwrap();
    let (code, out, err) = run_cli(
        &[
            "inject",
            "--webhook-port",
            "18080",
            "--admin-port",
            "19090",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        inject_ok(
            &["--webhook-port", "18080", "--admin-port", "19090"],
            ONE_APP
        )
        .0
    );
    let (code, out, err) = inject(&[], "kind: Deployment\nspec: [\n");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("document 1"), "{err}");
}
