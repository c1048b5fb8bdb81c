#!/usr/bin/env python3
"""Validates the Kubernetes manifests in k8s/ and the Dockerfiles, without a cluster.

    python3 k8s/check.py                 validate everything; exit 0, or 1 with one line per problem
    python3 k8s/check.py --print-config  print the sidecar.toml held by the ConfigMap, byte for byte
    python3 k8s/check.py --print-queries print, as JSON, every PromQL expression of k8s/monitoring (alerts,
                                         dashboard panels and variables): tests/it/monitoring.rs checks that
                                         each series they name is on /metrics
    python3 k8s/check.py --self-test     break the manifests in memory in known ways and show that each
                                         break is caught (so that a green run means something)
    python3 k8s/check.py --validate FILE validate every document of FILE strictly (tests/it/inject.rs)

1. Schemas: every manifest is validated strictly (unknown fields are errors) with the PyPI package
   kubernetes-validate against Kubernetes 1.29 and the newest version it bundles; the variants meant for
   older clusters (two containers) also against the oldest version it bundles.
2. Structure, per variant, as `kubectl apply -k` would create it: the Service reaches the sidecar's webhook
   port and never the app's, the probes hit the admin port, the app is bound to loopback, the config and
   secret files the TOML names are really mounted, the securityContext is locked down, the image carries
   Cargo.toml's version, and so on. Every sidecar container is the native-sidecar one (bar restartPolicy).
3. The kustomize components (k8s/components), rendered over the sample app in k8s/examples by `kubectl
   kustomize` (kustomize is built into kubectl; apt-get install kubectl), pass the same checks.
4. k8s/monitoring: the PodMonitor selects every variant's pod on its admin port, every alert has a
   severity, a summary and a `for`, and the Grafana dashboard is JSON whose panels all have queries. (That
   their series exist on /metrics is tests/it/monitoring.rs.)

native-sidecar and two-containers are rendered here from their kustomization.yaml (`resources` only, which
is all they use). kubernetes-validate (and PyYAML with it) is installed into a virtualenv at
target/k8s-venv on first use (`python3 -m venv`: on Debian the python3-venv package).
"""

import copy
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.environ.get("PPS_K8S_VENV") or os.path.join(REPO, "target", "k8s-venv")
REQUIREMENTS = ["kubernetes-validate==1.37.0", "tomli>=2; python_version < '3.11'"]
MIN_VERSION = "1.29"

# Directories under k8s/ that `kubectl apply -k` takes, each a complete app with its sidecar.
VARIANTS = ["native-sidecar", "two-containers", "examples/with-sidecar", "examples/with-sidecar-legacy"]
# The sidecar as an init container with restartPolicy: Always (Kubernetes 1.29+); the others are for older
# clusters, with the sidecar as a plain second container.
NATIVE = {"native-sidecar", "examples/with-sidecar"}
# Rendered by `kubectl kustomize` (they use components and generators), the others by Render below.
KUSTOMIZE = {"examples/with-sidecar", "examples/with-sidecar-legacy"}
# Folders whose files are reached by `kubectl kustomize` rather than by Render.
KUSTOMIZED_DIRS = ("components", "examples", "monitoring")
SIDECAR_IMAGE = "pps-sidecar"
CONFIG_PATH = "/etc/pps-sidecar/sidecar.toml"
SIDECAR_ARGS = ["run", "--config", CONFIG_PATH]
RUN_AS_USER = 65532
# server.shutdown_delay_ms's default: the time endpoints take to drop a terminating pod.
SHUTDOWN_DELAY_MS = 5000
# What the Dockerfile's build (.ci/build-release: cargo build --release --locked) reads, and what it must not
# be sent: the tests, the benchmarks, the manifests, the examples and the build output.
DOCKER_NEEDED = {"Cargo.toml", "Cargo.lock", "src", ".ci"}
DOCKER_IGNORED = {"target", ".git", "dist", "tests", "bench", "k8s", "examples"}
INJECT_SOURCES = ["k8s/components/pps-sidecar/deployment-patch.yaml",
                  "k8s/components/pps-sidecar-legacy/deployment-patch.yaml"]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
VERSION = None  # Cargo.toml's package.version, read in main() (tomllib may need the virtualenv)


# ---- the virtualenv -------------------------------------------------------------------------------


def bootstrap():
    """Re-executes this script with the virtualenv's python, creating the virtualenv first if needed."""
    if os.environ.get("PPS_K8S_IN_VENV") == VENV:
        return
    python = os.path.join(VENV, "bin", "python")
    marker = os.path.join(VENV, ".installed")
    wanted = "\n".join(REQUIREMENTS)
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    import fcntl
    import shutil

    # Several tests may start at once: one creates the virtualenv, the others wait for it.
    with open(VENV + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = open(marker).read() if os.path.exists(marker) else None
        if installed != wanted:
            shutil.rmtree(VENV, ignore_errors=True)
            print(f"check.py: creating {VENV} with {', '.join(REQUIREMENTS)}", file=sys.stderr)
            step([sys.executable, "-m", "venv", VENV],
                 "cannot create a virtualenv; on Debian: apt-get install python3-venv")
            step([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
                 "cannot install the validator from PyPI")
            with open(marker, "w") as f:
                f.write(wanted)
    env = dict(os.environ, PPS_K8S_IN_VENV=VENV)
    os.execve(python, [python, os.path.abspath(__file__), *sys.argv[1:]], env)


def step(cmd, hint):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"check.py: {' '.join(cmd)} failed ({hint}):\n{r.stdout}")


# ---- reading the manifests ------------------------------------------------------------------------


def rel(path):
    return os.path.relpath(path, REPO)


def load_docs(path):
    import yaml

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


class Render:
    """What `kubectl apply -k DIR` would apply, for kustomizations that only list resources."""

    def __init__(self, errors):
        self.errors = errors
        self.files = []  # every resource file reached, in order
        self.docs = []  # (file, document)

    def dir(self, d, seen=()):
        k = os.path.join(d, "kustomization.yaml")
        if not os.path.isfile(k):
            self.errors.append(f"{rel(d)}: no kustomization.yaml")
            return
        if d in seen:
            self.errors.append(f"{rel(k)}: resources form a cycle")
            return
        docs = load_docs(k)
        if len(docs) != 1:
            self.errors.append(f"{rel(k)}: expected one document")
            return
        kz = docs[0]
        if kz.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kz.get("kind") != "Kustomization":
            self.errors.append(f"{rel(k)}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
        other = sorted(set(kz) - {"apiVersion", "kind", "resources"})
        if other:
            # This renderer (and the tests) understand `resources` only; anything else would be ignored here
            # and yet change what kubectl applies.
            self.errors.append(f"{rel(k)}: uses {other}; k8s/check.py renders `resources` only")
        for r in kz.get("resources") or []:
            p = os.path.normpath(os.path.join(d, r))
            if os.path.isdir(p):
                self.dir(p, (*seen, d))
            elif os.path.isfile(p):
                self.files.append(p)
                self.docs.extend((p, doc) for doc in load_docs(p))
            else:
                self.errors.append(f"{rel(k)}: resource {r} does not exist")


KUSTOMIZED = {}
RENDER_ROOT = None
# Files the examples' secretGenerators read, which are never committed: a copy of k8s/ gets fresh ones.
GENERATED_SECRETS = ["examples/with-sidecar/hmac", "examples/with-sidecar-legacy/hmac"]


def render_root():
    """A copy of k8s/ in a temporary folder, with a random `hmac` file where an example generates its
    Secret from one (as k8s/README.md tells a user to make it): the repository holds no secret at all."""
    global RENDER_ROOT
    if RENDER_ROOT is None:
        import atexit
        import secrets
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="pps-k8s-")
        atexit.register(shutil.rmtree, tmp, True)
        RENDER_ROOT = os.path.join(tmp, "k8s")
        shutil.copytree(HERE, RENDER_ROOT, ignore=shutil.ignore_patterns("hmac"))
        for f in GENERATED_SECRETS:
            with open(os.path.join(RENDER_ROOT, f), "w") as out:
                out.write(secrets.token_hex(32))
    return RENDER_ROOT


def kustomize(d, errors):
    """The documents `kubectl kustomize k8s/D` prints (once per process), or None with an error."""
    if d not in KUSTOMIZED:
        import shutil

        # kubectl has kustomize built in; a standalone kustomize does as well. Components need kustomize
        # 3.7 or later: kubectl 1.21 or later (Debian 12's own kubernetes-client, 1.20, is too old).
        cmd = (["kubectl", "kustomize"] if shutil.which("kubectl") or not shutil.which("kustomize")
               else ["kustomize", "build"])
        try:
            out = subprocess.run([*cmd, os.path.join(render_root(), d)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            out = None
        if out is None or out.returncode != 0:
            KUSTOMIZED[d] = f"{' '.join(cmd)} failed (kubectl 1.21+ missing? .ci/deps installs it): " + (
                out.stderr.strip() if out else "neither kubectl nor kustomize on PATH")
        else:
            import yaml

            KUSTOMIZED[d] = [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]
    got = KUSTOMIZED[d]
    if isinstance(got, str):
        errors.append(f"{d}: {got}")
        return None
    return copy.deepcopy(got)


def render(variant, errors):
    if variant in KUSTOMIZE:
        r = Render(errors)
        r.docs = [(os.path.join(HERE, variant, "(kustomize)"), doc) for doc in kustomize(variant, errors) or []]
        return r
    r = Render(errors)
    r.dir(os.path.join(HERE, variant))
    seen = set()
    for f, doc in r.docs:
        key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
        if key in seen:
            errors.append(f"{variant}: {key[0]}/{key[1]} defined twice ({rel(f)})")
        seen.add(key)
    return r


# ---- schemas --------------------------------------------------------------------------------------


def schema_versions(oldest_too):
    from kubernetes_validate import utils

    versions = [MIN_VERSION, utils.major_minor(utils.latest_version())]
    if oldest_too:
        versions.insert(0, utils.major_minor(utils.all_versions()[0]))
    return list(dict.fromkeys(versions))


SCHEMA_RESULTS = {}


def schema_errors(label, doc, versions):
    """Strict validation of one document against each version; a kind without a schema is an error."""
    import functools

    from kubernetes_validate import utils

    if not hasattr(utils.schema_contents, "cache_info"):
        # The schema files are large and the self-test validates many variants of the same documents.
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    key = (label, tuple(versions), repr(doc))
    if key in SCHEMA_RESULTS:
        return SCHEMA_RESULTS[key]
    out = []
    for v in versions:
        try:
            utils.validate(doc, v, strict=True)
        except utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            out.append(f"{label}: invalid for Kubernetes {v}: {path}: {e.message}")
        except (utils.SchemaNotFoundError, utils.InvalidSchemaError, utils.VersionNotSupportedError) as e:
            out.append(f"{label}: cannot validate for Kubernetes {v}: {e.message}")
    SCHEMA_RESULTS[key] = out
    return out


# ---- structure ------------------------------------------------------------------------------------


def host_port(addr):
    host, _, port = str(addr).rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return host, None


def toml_loads(text):
    try:
        import tomllib
    except ImportError:  # Python before 3.11: tomli, installed into the virtualenv
        import tomli as tomllib
    return tomllib.loads(text)


def quantity(q):
    """A Kubernetes quantity as a float (cpu in cores, memory in bytes)."""
    m = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(q))
    if not m:
        return None
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(m.group(1)) * scale[m.group(2)]


def one(docs, kind, errors, variant):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        errors.append(f"{variant}: expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def mounted_files(pod, container, keys):
    """Absolute path -> (kind, name, key, optional) for every ConfigMap/Secret key mounted in `container`.
    `keys(kind, name)` lists the keys of a ConfigMap or Secret (for sources without `items`)."""
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    out = {}

    def add(mount, kind, src):
        items = src.get("items")
        if items is None:
            items = [{"key": k, "path": k} for k in sorted(keys(kind, src.get("name")))]
        for it in items:
            path = os.path.normpath(os.path.join(mount, it["path"]))
            out[path] = (kind, src.get("name"), it["key"], bool(src.get("optional")))

    for m in container.get("volumeMounts") or []:
        v = volumes.get(m.get("name"))
        if v is None:
            continue
        mount = m.get("mountPath", "")
        if "subPath" in m or "subPathExpr" in m:
            continue  # reported by the caller: a subPath mount is never updated in place
        if "configMap" in v:
            add(mount, "ConfigMap", v["configMap"])
        if "secret" in v:
            s = v["secret"]
            add(mount, "Secret", {"name": s.get("secretName"), **s})
        for src in (v.get("projected") or {}).get("sources") or []:
            if "configMap" in src:
                add(mount, "ConfigMap", src["configMap"])
            if "secret" in src:
                add(mount, "Secret", src["secret"])
    return out


def data_keys(doc):
    return set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys())


def check_structure(variant, docs):
    """Everything that makes the pod route and run as documented. Returns a list of problems."""
    e = []
    dep = one(docs, "Deployment", e, variant)
    svc = one(docs, "Service", e, variant)
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
    if dep is None or svc is None:
        return e
    tpl = dep["spec"]["template"]
    pod = tpl["spec"]
    labels = tpl.get("metadata", {}).get("labels") or {}
    annotations = tpl.get("metadata", {}).get("annotations") or {}
    inits = pod.get("initContainers") or []
    mains = pod.get("containers") or []
    everyone = inits + mains

    # -- which container is which
    def is_sidecar(c):
        return c.get("image", "").split("/")[-1].split(":")[0].split("@")[0] == SIDECAR_IMAGE

    sidecars = [c for c in everyone if is_sidecar(c)]
    apps = [c for c in mains if not is_sidecar(c)]
    if len(sidecars) != 1 or len(apps) != 1:
        e.append(f"{variant}: expected one pps-sidecar container and one app container, "
                 f"found {len(sidecars)} and {len(apps)}")
        return e
    side, app = sidecars[0], apps[0]
    if variant in NATIVE:
        if side not in inits or side.get("restartPolicy") != "Always":
            e.append(f"{variant}: the sidecar must be an init container with restartPolicy: Always")
    else:
        if side not in mains or "restartPolicy" in side or inits:
            e.append(f"{variant}: the sidecar must be a plain container (no restartPolicy, no init containers)")
    if side.get("args") != SIDECAR_ARGS:
        e.append(f"{variant}: sidecar args must be {SIDECAR_ARGS}, not {side.get('args')}")
    if side.get("image") != f"pps-sidecar:{VERSION}":
        e.append(f"{variant}: sidecar image must be pps-sidecar:{VERSION}, Cargo.toml's version "
                 f"(users substitute their registry with `images:`), not {side.get('image')}")
    app_tag = app.get("image", "").rpartition(":")[2]
    if "@" not in app.get("image", "") and (not app_tag or app_tag == "latest" or "/" in app_tag):
        e.append(f"{variant}: app image {app.get('image')} needs a version tag, not latest")

    # -- the configuration the sidecar will read
    def keys(kind, name):
        obj = (cms if kind == "ConfigMap" else secrets).get(name)
        return data_keys(obj) if obj else set()

    files = mounted_files(pod, side, keys)
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    writable = []  # the sidecar's writable mounts: only its spool, on an emptyDir or a PVC
    for c in everyone:
        for m in c.get("volumeMounts") or []:
            if "subPath" in m or "subPathExpr" in m:
                e.append(f"{variant}: {c['name']} mounts {m.get('mountPath')} with subPath: "
                         "it would never see ConfigMap/Secret updates")
            if c is side and not m.get("readOnly"):
                v = volumes.get(m.get("name")) or {}
                if "emptyDir" in v or "persistentVolumeClaim" in v:
                    writable.append(os.path.normpath(m.get("mountPath", "")))
                else:
                    e.append(f"{variant}: sidecar mount {m.get('mountPath')} must be readOnly")
    src = files.get(CONFIG_PATH)
    if src is None or src[0] != "ConfigMap" or src[1] not in cms:
        e.append(f"{variant}: {CONFIG_PATH} is not mounted from a ConfigMap of this variant")
        return e
    cm = cms[src[1]]
    text = (cm.get("data") or {}).get(src[2])
    if text is None:
        e.append(f"{variant}: ConfigMap {src[1]} has no key {src[2]}")
        return e
    try:
        conf = toml_loads(text)
    except Exception as ex:  # noqa: BLE001 - any parse error is the finding
        e.append(f"{variant}: ConfigMap {src[1]} {src[2]} is not TOML: {ex}")
        return e
    spool_dir = conf.get("spool", {}).get("dir")
    for w in writable:
        if spool_dir is None or w != os.path.normpath(spool_dir):
            e.append(f"{variant}: sidecar mount {w} is writable but is not spool.dir ({spool_dir}): "
                     "must be readOnly")
    if spool_dir is not None and os.path.normpath(spool_dir) not in writable:
        e.append(f"{variant}: spool.dir {spool_dir} must be a writable emptyDir or PVC mount of the "
                 "sidecar (its root filesystem is read-only)")
    server, upstream = conf.get("server", {}), conf.get("upstream", {})
    _, listen = host_port(server.get("listen", "0.0.0.0:8080"))
    _, admin = host_port(server.get("admin_listen", "0.0.0.0:9090"))
    app_host, app_port = host_port(upstream.get("address", ""))
    grace = server.get("shutdown_grace_seconds")
    if app_host not in LOOPBACK_HOSTS:
        e.append(f"{variant}: upstream.address {upstream.get('address')!r} must be a loopback address")
    if len({listen, admin, app_port}) != 3:
        e.append(f"{variant}: listen ({listen}), admin_listen ({admin}) and the app ({app_port}) must differ")
    if grace != 20:
        e.append(f"{variant}: server.shutdown_grace_seconds must be 20, is {grace}")
    secret_specs = conf.get("auth", {}).get("hmac", {}).get("secrets")
    if not secret_specs:
        e.append(f"{variant}: auth.hmac.secrets is empty")
    for i, s in enumerate(secret_specs or []):
        f = s.get("file")
        if f is None:
            e.append(f"{variant}: auth.hmac.secrets[{i}] must be a file mounted from the Secret")
            continue
        got = files.get(os.path.normpath(f))
        if got is None or got[0] != "Secret":
            e.append(f"{variant}: auth.hmac.secrets[{i}].file {f} is not mounted from a Secret")
        elif got[3]:
            e.append(f"{variant}: auth.hmac.secrets[{i}].file {f} comes from an optional item")
        elif got[1] in secrets and got[2] not in data_keys(secrets[got[1]]):
            e.append(f"{variant}: auth.hmac.secrets[{i}].file {f}: Secret {got[1]} has no key {got[2]}")
        elif got[1] not in secrets and variant in KUSTOMIZE:
            e.append(f"{variant}: the example generates no Secret {got[1]} (secretGenerator from `hmac`)")
    # The Redis password: from a Secret, as the HMAC secrets (never the ConfigMap, never an env literal).
    redis_pw = conf.get("dedup", {}).get("redis_password")
    if redis_pw is not None:
        f = redis_pw.get("file") if isinstance(redis_pw, dict) else None
        got = files.get(os.path.normpath(f)) if f else None
        if got is None or got[0] != "Secret":
            e.append(f"{variant}: dedup.redis_password must be a file mounted from a Secret")
    if variant not in KUSTOMIZE and secrets:
        e.append(f"{variant}: ships a Secret ({', '.join(secrets)}): a placeholder would be deployed by every "
                 "`kubectl apply -k`; the user creates it (k8s/README.md)")

    # -- ports: where the Service and the probes land
    def container_port(c, name_or_number):
        for p in c.get("ports") or []:
            if name_or_number in (p.get("name"), p.get("containerPort")):
                return p.get("containerPort")
        return None

    if container_port(side, "webhooks") != listen:
        e.append(f"{variant}: sidecar port `webhooks` must be server.listen's port {listen}")
    if container_port(side, "admin") != admin:
        e.append(f"{variant}: sidecar port `admin` must be server.admin_listen's port {admin}")
    for c in everyone:
        for p in c.get("ports") or []:
            if p.get("containerPort") == app_port:
                e.append(f"{variant}: {c['name']} declares the app's port {app_port}")
    if app.get("ports"):
        e.append(f"{variant}: the app container must declare no ports (it is reachable only via the sidecar)")
    listen_env = {v.get("name"): v.get("value") for v in app.get("env") or []}.get("APP_LISTEN")
    if listen_env != upstream.get("address"):
        e.append(f"{variant}: the app's APP_LISTEN ({listen_env}) must be upstream.address "
                 f"({upstream.get('address')})")

    selector = (svc.get("spec") or {}).get("selector") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        e.append(f"{variant}: the Service selector {selector} does not select the pod {labels}")
    match = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
    if not match or any(labels.get(k) != v for k, v in match.items()):
        e.append(f"{variant}: the Deployment selector {match} does not match its pod {labels}")
    ports = (svc.get("spec") or {}).get("ports") or []
    if not ports:
        e.append(f"{variant}: the Service has no ports")
    for p in ports:
        target = p.get("targetPort", p.get("port"))
        owners = [c for c in everyone if container_port(c, target) is not None]
        number = container_port(owners[0], target) if owners else target if isinstance(target, int) else None
        if owners != [side] or number != listen:
            e.append(f"{variant}: Service port {p.get('port')} targets {target!r} ({number}), "
                     f"not the sidecar's webhook port {listen}")
        if number == app_port:
            e.append(f"{variant}: Service port {p.get('port')} targets the app's port {app_port}")

    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = (side.get(kind) or {}).get("httpGet")
        if probe is None:
            e.append(f"{variant}: sidecar has no httpGet {kind}")
            continue
        if probe.get("path") != path:
            e.append(f"{variant}: sidecar {kind} must GET {path}, not {probe.get('path')}")
        if container_port(side, probe.get("port")) != admin:
            e.append(f"{variant}: sidecar {kind} port {probe.get('port')!r} is not the admin port {admin}")

    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(admin), "prometheus.io/path": "/metrics"}
    for k, v in want.items():
        if annotations.get(k) != v:
            e.append(f"{variant}: pod annotation {k} must be {v!r}, is {annotations.get(k)!r}")

    # -- lifecycle, security, resources
    # Absent is Kubernetes' default, 30 s; a longer one (an app that needs it) is fine.
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    # SIGTERM: serving on for shutdown_delay_ms (5000 unless set) with /readyz at 503, then the drain.
    delay = server.get("shutdown_delay_ms", SHUTDOWN_DELAY_MS) / 1000
    if not isinstance(tgps, int) or tgps < 30 or (isinstance(grace, int) and tgps <= delay + grace):
        e.append(f"{variant}: terminationGracePeriodSeconds must be at least 30 and above "
                 f"shutdown_delay_ms + shutdown_grace_seconds ({delay:g} + {grace} s), is {tgps}")
    env = {v.get("name"): v.get("value") for v in side.get("env") or []}
    if env.get("PPS_SIDECAR_CONFIG") != CONFIG_PATH:
        e.append(f"{variant}: the sidecar's env PPS_SIDECAR_CONFIG must be {CONFIG_PATH} (so that "
                 f"`kubectl exec ... -- pps-sidecar spool list` finds it), is {env.get('PPS_SIDECAR_CONFIG')}")
    pod_sc = pod.get("securityContext") or {}
    for c in (side, app):
        sc = c.get("securityContext") or {}
        expect = {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "readOnlyRootFilesystem": True,
                  "allowPrivilegeEscalation": False}
        for k, v in expect.items():
            if sc.get(k) != v:
                e.append(f"{variant}: {c['name']} securityContext.{k} must be {v}, is {sc.get(k)}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            e.append(f"{variant}: {c['name']} must drop ALL capabilities and add none")
        if sc.get("privileged"):
            e.append(f"{variant}: {c['name']} must not be privileged")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            e.append(f"{variant}: {c['name']} seccompProfile must be RuntimeDefault, is {seccomp}")
    res = side.get("resources") or {}
    for r in ("cpu", "memory"):
        req = quantity((res.get("requests") or {}).get(r))
        lim = quantity((res.get("limits") or {}).get(r))
        if req is None or lim is None or req > lim:
            e.append(f"{variant}: sidecar needs resources.requests.{r} <= resources.limits.{r}")
    return e


# ---- Dockerfiles ----------------------------------------------------------------------------------


def check_dockerfiles():
    e = []

    def instructions(path):
        with open(path) as f:
            text = re.sub(r"\\\n", " ", f.read())
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    root = instructions(os.path.join(REPO, "Dockerfile"))
    froms = [i for i in root if i.upper().startswith("FROM ")]
    if len(froms) != 2 or not froms[0].startswith("FROM rust:1-bookworm"):
        e.append("Dockerfile: expected a rust:1-bookworm build stage and a runtime stage")
    if not froms or froms[-1].split()[1].split("@")[0] != "gcr.io/distroless/cc-debian12:nonroot":
        e.append("Dockerfile: the runtime stage must be gcr.io/distroless/cc-debian12:nonroot")
    for f in froms:
        if not re.search(r"@sha256:[0-9a-f]{64}(\s|$)", f):
            e.append(f"Dockerfile: `{f}` must pin its base image by digest (@sha256:...)")
    build_run = " ".join(i for i in root if i.upper().startswith("RUN "))
    if "strip" not in build_run:
        e.append("Dockerfile: the binary must be stripped")
    labels = " ".join(i for i in root if i.upper().startswith("LABEL "))
    for key in ("source", "version", "revision"):
        if f"org.opencontainers.image.{key}=" not in labels:
            e.append(f"Dockerfile: needs the OCI label org.opencontainers.image.{key}")
    runtime = root[root.index(froms[-1]):] if froms else []
    build = root[:root.index(froms[-1])] if froms else []
    if not any(".ci/build-release" in i for i in build if i.upper().startswith("RUN ")):
        e.append("Dockerfile: the build stage must run .ci/build-release")
    users = [i.split()[1] for i in runtime if i.upper().startswith("USER ")]
    # Numeric, so that a pod with runAsNonRoot and no runAsUser starts: the kubelet cannot tell whether a
    # user name is root.
    if not users or users[-1] != f"{RUN_AS_USER}:{RUN_AS_USER}":
        e.append(f"Dockerfile: the runtime stage must end as USER {RUN_AS_USER}:{RUN_AS_USER} (numeric)")
    exposed = {p for i in runtime if i.upper().startswith("EXPOSE ") for p in i.split()[1:]}
    if not {"8080", "9090"} <= exposed:
        e.append(f"Dockerfile: must EXPOSE 8080 9090, exposes {sorted(exposed)}")
    entry = [i for i in runtime if i.upper().startswith("ENTRYPOINT ")]
    copied = [i.split()[-1] for i in runtime if i.upper().startswith("COPY ")]
    if len(entry) != 1 or not any(f'["{c}"]' in entry[0] for c in copied):
        e.append("Dockerfile: ENTRYPOINT must be the binary copied into the runtime stage")

    app = instructions(os.path.join(REPO, "examples", "legacy-app", "Dockerfile"))
    if not app or app[0] != "FROM python:3.12-slim":
        e.append("examples/legacy-app/Dockerfile: must be FROM python:3.12-slim")
    users = [i.split()[1] for i in app if i.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] != str(RUN_AS_USER):
        e.append(f"examples/legacy-app/Dockerfile: must run as USER {RUN_AS_USER} (the pod's runAsUser)")
    if not any(i.startswith("CMD ") and "app.py" in i for i in app):
        e.append("examples/legacy-app/Dockerfile: CMD must run app.py")
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = {ln.strip().rstrip("/") for ln in f if ln.strip()}
    missing = sorted(DOCKER_IGNORED - ignored)
    if missing:
        e.append(f".dockerignore: must also ignore {missing} (the build needs only {sorted(DOCKER_NEEDED)})")
    needed = sorted(n for n in DOCKER_NEEDED if n in ignored or n.split("/")[0] in ignored)
    # `inject` compiles the Components' patches in (include_str!): they must reach the build.
    for patch in INJECT_SOURCES:
        if f"!{patch}" not in ignored:
            needed.append(patch)
    if needed:
        e.append(f".dockerignore: ignores {needed}, which the build needs")
    return e


# ---- the whole check ------------------------------------------------------------------------------


def cargo_version():
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        return toml_loads(f.read())["package"]["version"]


def pod_spec(docs):
    dep = next((d for d in docs if d.get("kind") == "Deployment"), None)
    return (dep or {}).get("spec", {}).get("template", {})


def sidecar_container(docs):
    spec = pod_spec(docs).get("spec") or {}
    found = [c for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
             if c.get("name") == "pps-sidecar"]
    return found[0] if len(found) == 1 else None


def check_in_step(variant, docs, model_docs):
    """The sidecar container and its TOML are the native-sidecar variant's (bar restartPolicy): one model."""
    e = []
    mine, model = sidecar_container(docs), sidecar_container(model_docs)
    if mine is not None and model is not None:
        strip = ({k: v for k, v in c.items() if k != "restartPolicy"} for c in (mine, model))
        if next(strip) != next(strip):
            e.append(f"{variant}: the pps-sidecar container differs from native-sidecar's (keep them in step)")
    cm = lambda ds: next((d for d in ds if d.get("kind") == "ConfigMap"), {}).get("data", {}).get("sidecar.toml")
    if variant in KUSTOMIZE and cm(docs) != cm(model_docs):
        e.append(f"{variant}: its sidecar.toml differs from base/configmap.yaml's (keep them in step)")
    return e


# ---- monitoring -----------------------------------------------------------------------------------

SEVERITIES = ("warning", "critical")
# kube-prometheus-stack's Prometheus selects PodMonitors and rules by release: <release name>.
RELEASE = "kube-prometheus-stack"
ALERTS = ["PpsSidecarDown", "PpsSidecarWrongSecret", "PpsSidecarAppFailing", "PpsSidecarUnavailable",
          "PpsSidecarConnectionsRefused", "PpsSidecarConfigRefused", "PpsSidecarDedupStoreErrors",
          "PpsSidecarMemoryNearLimit", "PpsSidecarJwksRefreshFailing", "PpsSidecarSpoolGrowing",
          "PpsSidecarSpoolDropping", "PpsSidecarSpoolWriteFailing", "PpsSidecarNoDeliveries"]
# Words some panel title must hold: what an operator looks for.
PANELS = ["spool", "Open connections", "Connections closed", "p50, p90, p99", "memory and its limit"]


def readme_anchors():
    """The anchors GitHub gives k8s/README.md's headings (lowercase, punctuation dropped, spaces to -)."""
    with open(os.path.join(HERE, "README.md")) as f:
        heads = [ln.lstrip("#").strip() for ln in f if ln.startswith("#")]
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in heads}


def check_monitoring(docs, pods):
    """`docs`: k8s/monitoring rendered; `pods`: variant -> pod template. Returns problems."""
    import json

    e = []
    monitors = [d for d in docs if d.get("kind") == "PodMonitor"]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    boards = [d for d in docs if d.get("kind") == "ConfigMap"]
    if len(monitors) != 1 or len(rules) != 1 or len(boards) != 1:
        return [f"monitoring: expected one PodMonitor, one PrometheusRule and one dashboard ConfigMap, found "
                f"{len(monitors)}, {len(rules)} and {len(boards)}"]
    for d in monitors + rules:
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            e.append(f"monitoring: {d['kind']} must be monitoring.coreos.com/v1")
    spec = monitors[0].get("spec") or {}
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    for variant, tpl in pods.items():
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        if not match or any(labels.get(k) != v for k, v in match.items()):
            e.append(f"monitoring: the PodMonitor selector {match} does not select {variant}'s pod {labels}")
    if "any" not in (spec.get("namespaceSelector") or {}):
        e.append("monitoring: the PodMonitor must look in every namespace (namespaceSelector: any: true)")
    eps = spec.get("podMetricsEndpoints") or []
    if not eps or any(ep.get("port") != "admin" or ep.get("path", "/metrics") != "/metrics" for ep in eps):
        e.append("monitoring: the PodMonitor must scrape port `admin`, path /metrics")
    for d in monitors + rules:
        if (d.get("metadata", {}).get("labels") or {}).get("release") != RELEASE:
            e.append(f"monitoring: {d['kind']} needs the label release: {RELEASE} (kube-prometheus-stack's "
                     "default selectors)")
    alerts = [r for g in (rules[0].get("spec") or {}).get("groups") or [] for r in g.get("rules") or []]
    missing = sorted(set(ALERTS) - {r.get("alert") for r in alerts})
    if missing:
        e.append(f"monitoring: alerts missing: {missing}")
    anchors = readme_anchors()
    for r in alerts:
        url = str((r.get("annotations") or {}).get("runbook_url", ""))
        base, _, anchor = url.partition("#")
        if not base.startswith("https://") or anchor not in anchors:
            e.append(f"monitoring: alert {r.get('alert')} needs a runbook_url to a section of k8s/README.md "
                     f"(https://...#anchor), has {url!r}")
        if r.get("alert") == "PpsSidecarSpoolDropping" and 'reason!="superseded"' not in str(r.get("expr")):
            e.append("monitoring: PpsSidecarSpoolDropping must not fire on reason=\"superseded\" (not a loss)")
    for r in alerts:
        name = r.get("alert") or r.get("record")
        if not r.get("alert") or not str(r.get("expr", "")).strip():
            e.append(f"monitoring: rule {name} needs an alert name and an expr")
        if not r.get("for"):
            e.append(f"monitoring: alert {name} needs a `for` (no page on one bad scrape)")
        if (r.get("labels") or {}).get("severity") not in SEVERITIES:
            e.append(f"monitoring: alert {name} needs labels.severity, one of {SEVERITIES}")
        ann = r.get("annotations") or {}
        if not ann.get("summary") or not ann.get("description"):
            e.append(f"monitoring: alert {name} needs annotations summary and description")
    cm = boards[0]
    if (cm.get("metadata", {}).get("labels") or {}).get("grafana_dashboard") != "1":
        e.append("monitoring: the dashboard ConfigMap needs the label grafana_dashboard: \"1\" (Grafana's sidecar)")
    for key, text in (cm.get("data") or {}).items():
        try:
            board = json.loads(text)
        except ValueError as ex:
            e.append(f"monitoring: {key} is not JSON: {ex}")
            continue
        panels = [p for p in board.get("panels") or [] if p.get("type") != "row"]
        if not panels:
            e.append(f"monitoring: {key} has no panels")
        for p in panels:
            if not any(str(t.get("expr", "")).strip() for t in p.get("targets") or []):
                e.append(f"monitoring: {key} panel {p.get('title')!r} has no query")
            # One unit per axis: the panel's, and no override that would put another on the same axis.
            fc = p.get("fieldConfig") or {}
            units = [str(o) for ov in fc.get("overrides") or [] for o in ov.get("properties") or []
                     if "unit" in str(o)]
            if not (fc.get("defaults") or {}).get("unit") or units:
                e.append(f"monitoring: {key} panel {p.get('title')!r} needs one unit (fieldConfig.defaults.unit) "
                         "and no override of it")
        titles = " ".join(str(p.get("title")) for p in panels)
        for word in PANELS:
            if word not in titles:
                e.append(f"monitoring: {key} has no panel on {word!r}")
    return e


COMPONENT_KINDS = "(Deployment|StatefulSet|DaemonSet)"


def check_components():
    """The Components patch workloads only (never a Service: kustomize cannot tell which Service selects
    which pod, nor which port served the app), every workload kind `inject` knows, with the opt-out."""
    e = []
    for name in ("pps-sidecar", "pps-sidecar-legacy"):
        (kz,) = load_docs(os.path.join(HERE, "components", name, "kustomization.yaml"))
        patches = kz.get("patches") or []
        targets = [p.get("target") or {} for p in patches]
        if any("Service" in str(t.get("kind")) for t in targets):
            e.append(f"components/{name}: patches Services; repoint them per port in the kustomization")
        if [t.get("kind") for t in targets] != [COMPONENT_KINDS]:
            e.append(f"components/{name}: must patch kind {COMPONENT_KINDS} (one patch), patches "
                     f"{[t.get('kind') for t in targets]}")
        if any(t.get("annotationSelector") != "pps-sidecar.io/inject!=false" for t in targets):
            e.append(f"components/{name}: every patch needs annotationSelector pps-sidecar.io/inject!=false")
    return e


def check_no_secret_files():
    """No manifest in the repository is a Secret: a placeholder would be deployed by a plain apply."""
    e = []
    for f in all_yaml_files():
        for d in load_docs(f):
            if isinstance(d, dict) and d.get("kind") == "Secret":
                e.append(f"{rel(f)}: a Secret in the repository would be deployed as it is: let the user "
                         "create it (kubectl create secret) or generate it from an ignored file")
    return e


def check_policies(docs, pods):
    """k8s/examples/policies: the PDB and the NetworkPolicy select the example pods; only the ingress
    reaches `webhooks`, only Prometheus `admin`, and nothing else is allowed in."""
    e = []
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    nps = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    if len(pdbs) != 1 or len(nps) != 1:
        return [f"policies: expected one PodDisruptionBudget and one NetworkPolicy, found {len(pdbs)}, {len(nps)}"]
    labels = (pods["native-sidecar"].get("metadata") or {}).get("labels") or {}
    for d in pdbs + nps:
        sel = (d["spec"].get("selector") or d["spec"].get("podSelector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            e.append(f"policies: {d['kind']} selector {sel} does not select the native-sidecar pod {labels}")
    if "minAvailable" in pdbs[0]["spec"]:
        e.append("policies: the PodDisruptionBudget must use maxUnavailable (minAvailable: 1 with one "
                 "replica blocks every drain)")
    rules = nps[0]["spec"].get("ingress") or []
    if nps[0]["spec"].get("policyTypes") != ["Ingress"] or len(rules) != 2:
        e.append("policies: the NetworkPolicy must be Ingress only, with two rules")
    want = {"webhooks": "ingress-nginx", "admin": "prometheus"}
    for r in rules:
        ports = [p.get("port") for p in r.get("ports") or []]
        peers = r.get("from") or []
        names = [((p.get("podSelector") or {}).get("matchLabels") or {}).get("app.kubernetes.io/name")
                 for p in peers]
        if len(ports) != 1 or ports[0] not in want or names != [want[ports[0]]] or \
                not all(p.get("namespaceSelector") for p in peers):
            e.append(f"policies: the NetworkPolicy rule for ports {ports} must admit only "
                     f"{want.get(ports[0] if ports else None)} pods of one namespace, admits {names}")
    return e


def all_yaml_files():
    out = []
    for d, _, fs in os.walk(HERE):
        out.extend(os.path.join(d, f) for f in fs if f.endswith((".yaml", ".yml")))
    return sorted(out)


def run_checks(mutate=None, quiet=False):
    """Returns (problems, summary lines). `mutate(variant, docs)` may alter the rendered documents first."""
    errors, summary = [], []
    reached, validated = set(), 0
    renders = {}
    for variant in VARIANTS:
        r = render(variant, errors)
        renders[variant] = r
        reached.update(r.files)
    # Every manifest file belongs to some variant: a forgotten file would be silently never applied.
    for f in all_yaml_files():
        if rel(f).split(os.sep)[1] in KUSTOMIZED_DIRS:
            continue  # reached by kubectl kustomize: checked by rendering them
        if os.path.basename(f) != "kustomization.yaml" and f not in reached:
            errors.append(f"{rel(f)}: not listed in any kustomization.yaml")

    rendered = {}
    for variant, r in renders.items():
        docs = [copy.deepcopy(d) for _, d in r.docs]
        if mutate is not None:
            mutate(variant, docs)
        versions = schema_versions(oldest_too=variant not in NATIVE)
        problems = []
        for (f, _), doc in zip(r.docs, docs):
            label = f"{rel(f)} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            problems.extend(schema_errors(label, doc, versions))
            validated += len(versions)
        problems.extend(check_structure(variant, docs))
        if variant != VARIANTS[0]:
            problems.extend(check_in_step(variant, docs, rendered[VARIANTS[0]]))
        rendered[variant] = docs
        errors.extend(problems)
        if not problems:
            summary.append(f"{variant}: ok ({len(docs)} documents; schemas {', '.join(versions)})")
    monitoring = kustomize("monitoring", errors) or []
    if mutate is not None:
        mutate("monitoring", monitoring)
    problems = [p for d in monitoring if d.get("kind") == "ConfigMap"
                for p in schema_errors(f"monitoring ConfigMap/{d['metadata'].get('name')}", d, [MIN_VERSION])]
    problems += check_monitoring(monitoring, {v: pod_spec(ds) for v, ds in rendered.items()})
    errors.extend(problems)
    if not problems:
        summary.append(f"monitoring: ok ({len(monitoring)} documents)")
    policies = kustomize("examples/policies", errors) or []
    if mutate is not None:
        mutate("policies", policies)
    problems = [p for d in policies for p in schema_errors(
        f"examples/policies {d.get('kind')}/{d['metadata'].get('name')}", d, schema_versions(True))]
    problems += check_policies(policies, {v: pod_spec(ds) for v, ds in rendered.items()})
    errors.extend(problems)
    if not problems:
        summary.append(f"examples/policies: ok ({len(policies)} documents)")
    errors.extend(check_components())
    errors.extend(check_no_secret_files())
    errors.extend(check_dockerfiles())
    summary.append(f"{validated} schema validations")
    return list(dict.fromkeys(errors)), summary


def print_queries():
    import json

    errors = []
    docs = kustomize("monitoring", errors)
    if errors:
        sys.exit("\n".join(errors))
    out = []
    for d in docs:
        if d.get("kind") == "PrometheusRule":
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    out.append({"source": f"alert {r.get('alert') or r.get('record')}", "expr": r["expr"]})
        if d.get("kind") == "ConfigMap":
            for key, text in d["data"].items():
                board = json.loads(text)
                for p in board.get("panels") or []:
                    for t in p.get("targets") or []:
                        out.append({"source": f"{key} panel {p.get('title')!r}", "expr": t["expr"]})
                for v in (board.get("templating") or {}).get("list") or []:
                    query = v.get("query")
                    if v.get("type") == "query":
                        out.append({"source": f"{key} variable {v['name']}",
                                    "expr": query.get("query") if isinstance(query, dict) else query})
    print(json.dumps(out, indent=1))


def print_config():
    (cm,) = [d for d in load_docs(os.path.join(HERE, "base", "configmap.yaml")) if d.get("kind") == "ConfigMap"]
    sys.stdout.write(cm["data"]["sidecar.toml"])


# ---- self-test: each of these breaks must be caught -----------------------------------------------


def pod(docs):
    return next(d for d in docs if d.get("kind") == "Deployment")["spec"]["template"]["spec"]


def sidecar(docs):
    p = pod(docs)
    return next(c for c in (p.get("initContainers") or []) + p["containers"] if c["name"] == "pps-sidecar")


def app(docs):
    return next(c for c in pod(docs)["containers"] if c["name"] == "app")


def service(docs):
    return next(d for d in docs if d.get("kind") == "Service")


def configmap(docs):
    return next(d for d in docs if d.get("kind") == "ConfigMap")


def toml_edit(old, new):
    def f(docs):
        cm = configmap(docs)
        assert old in cm["data"]["sidecar.toml"], old
        cm["data"]["sidecar.toml"] = cm["data"]["sidecar.toml"].replace(old, new)
    return f


def setter(get, key, value):
    def f(docs):
        get(docs)[key] = value
    return f


def drop_key(get, key):
    def f(docs):
        get(docs).pop(key)
    return f


BREAKS = [
    # (what, variants or None for all, mutation, text the report must contain)
    ("Service targets the app's port", None,
     lambda d: service(d)["spec"]["ports"][0].update(targetPort=3000), "app's port 3000"),
    ("Service targets the admin port", None,
     lambda d: service(d)["spec"]["ports"][0].update(targetPort="admin"), "not the sidecar's webhook port"),
    ("Service selects other pods", None,
     lambda d: service(d)["spec"].update(selector={"app": "other"}), "does not select the pod"),
    ("the app declares its port", None,
     lambda d: app(d).update(ports=[{"name": "http", "containerPort": 3000}]), "declares the app's port 3000"),
    ("the app listens on all interfaces", None,
     lambda d: app(d)["env"][0].update(value="0.0.0.0:3000"), "APP_LISTEN"),
    ("the config points at a remote app", None,
     toml_edit('address = "127.0.0.1:3000"', 'address = "10.0.0.5:3000"'), "loopback"),
    ("webhook port name is on the wrong number", None,
     lambda d: sidecar(d)["ports"][0].update(containerPort=8081), "port `webhooks`"),
    ("liveness probe on the webhook port", None,
     lambda d: sidecar(d)["livenessProbe"]["httpGet"].update(port="webhooks"), "livenessProbe port"),
    ("readiness probe on /healthz", None,
     lambda d: sidecar(d)["readinessProbe"]["httpGet"].update(path="/healthz"), "readinessProbe must GET"),
    ("readiness probe by number on the app's port", None,
     lambda d: sidecar(d)["readinessProbe"]["httpGet"].update(port=3000), "readinessProbe port"),
    ("no readiness probe", None, drop_key(sidecar, "readinessProbe"), "no httpGet readinessProbe"),
    ("native sidecar without restartPolicy", ["native-sidecar"],
     drop_key(sidecar, "restartPolicy"), "restartPolicy: Always"),
    ("plain sidecar with restartPolicy", ["two-containers"],
     setter(sidecar, "restartPolicy", "Always"), "plain container"),
    ("writable root file system for the app", None,
     lambda d: app(d)["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    ("the sidecar as root", None,
     lambda d: sidecar(d)["securityContext"].update(runAsUser=0), "runAsUser"),
    ("capabilities kept", None,
     lambda d: sidecar(d)["securityContext"].pop("capabilities"), "drop ALL capabilities"),
    ("privilege escalation allowed", None,
     lambda d: app(d)["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    ("no sidecar limits", None,
     lambda d: sidecar(d)["resources"].pop("limits"), "resources.limits"),
    ("grace period shorter than the drain", None,
     lambda d: pod(d).update(terminationGracePeriodSeconds=20), "terminationGracePeriodSeconds"),
    ("drain not configured", None,
     toml_edit("shutdown_grace_seconds = 20", "shutdown_grace_seconds = 60"), "shutdown_grace_seconds"),
    ("secret file not mounted", None,
     toml_edit("/etc/pps-sidecar/secrets/hmac", "/etc/pps-sidecar/secret/hmac"), "is not mounted from a Secret"),
    ("secret from the environment instead of the mounted Secret", None,
     toml_edit('secrets = [{ file = "/etc/pps-sidecar/secrets/hmac" }]', 'secrets = [{ env = "X" }]'),
     "must be a file"),
    ("the Redis password from the environment instead of the mounted Secret", None,
     toml_edit('# redis_password = { file = "/etc/pps-sidecar/secrets/redis-password" }',
               'redis_password = { env = "REDIS_PASSWORD" }'),
     "dedup.redis_password must be a file mounted from a Secret"),
    ("the Redis password from a file no Secret mounts", None,
     toml_edit('# redis_password = { file = "/etc/pps-sidecar/secrets/redis-password" }',
               'redis_password = { file = "/etc/pps-sidecar/redis-password" }'),
     "dedup.redis_password must be a file mounted from a Secret"),
    ("config mounted with subPath", None,
     lambda d: sidecar(d)["volumeMounts"][0].update(subPath="sidecar.toml"), "subPath"),
    ("config mount writable", None,
     lambda d: sidecar(d)["volumeMounts"][0].pop("readOnly"), "must be readOnly"),
    ("spool dir not on the writable volume", None,
     toml_edit('dir = "/var/spool/pps-sidecar"', 'dir = "/var/spool/other"'), "is not spool.dir"),
    ("spool volume dropped", None,
     lambda d: sidecar(d).update(volumeMounts=sidecar(d)["volumeMounts"][:1]), "writable emptyDir or PVC"),
    ("wrong sidecar args", None,
     setter(sidecar, "args", ["run"]), "sidecar args"),
    ("Prometheus scrapes the webhook port", None,
     lambda d: next(x for x in d if x["kind"] == "Deployment")["spec"]["template"]["metadata"]["annotations"]
     .update({"prometheus.io/port": "8080"}), "prometheus.io/port"),
    # Schema: strict validation rejects unknown fields and wrong types.
    ("a misspelt field", None,
     lambda d: sidecar(d).update(restartPolcy="Always"), "restartPolcy"),
    ("a port number as a string", None,
     lambda d: sidecar(d)["ports"][1].update(containerPort="9090"), "invalid for Kubernetes"),
    ("a protocol that is not a string", None,
     lambda d: service(d)["spec"]["ports"][0].update(protocol=6), "invalid for Kubernetes"),
    # Versions and keeping the copies of the sidecar in step.
    ("the sidecar image as latest", None,
     setter(sidecar, "image", "pps-sidecar:latest"), "Cargo.toml's version"),
    ("the app image as latest", None,
     setter(app, "image", "pps-legacy-app:latest"), "needs a version tag"),
    ("a copy of the sidecar drifts from the native-sidecar one", VARIANTS[1:],
     lambda d: sidecar(d)["resources"]["limits"].update(memory="256Mi"), "differs from native-sidecar's"),
    ("an example's sidecar.toml drifts from the base one", sorted(KUSTOMIZE),
     toml_edit("max_entries = 100000", "max_entries = 90000"), "differs from base/configmap.yaml's"),
    ("exec'd commands cannot find the config", None,
     lambda d: sidecar(d).update(env=[v for v in sidecar(d)["env"] if v["name"] != "PPS_SIDECAR_CONFIG"]),
     "PPS_SIDECAR_CONFIG"),
    ("grace period shorter than the delay and the drain", None,
     toml_edit("shutdown_grace_seconds = 20", "shutdown_grace_seconds = 20\nshutdown_delay_ms = 10000"),
     "terminationGracePeriodSeconds"),
    ("a placeholder Secret in a variant", ["native-sidecar", "two-containers"],
     lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pps-webhook-secret"},
                         "stringData": {"hmac": "x"}}), "ships a Secret"),
    ("an example that generates no Secret", sorted(KUSTOMIZE),
     lambda d: d.remove(kind(d, "Secret")), "generates no Secret"),
    # Policies.
    ("the NetworkPolicy admits anyone to the webhook port", ["policies"],
     lambda d: kind(d, "NetworkPolicy")["spec"]["ingress"][0].update({"from": [{"podSelector": {}}]}),
     "must admit only"),
    ("the NetworkPolicy admits the ingress to the admin port", ["policies"],
     lambda d: kind(d, "NetworkPolicy")["spec"]["ingress"][1]["ports"][0].update(port="webhooks"),
     "must admit only"),
    ("a PDB that blocks drains", ["policies"],
     lambda d: kind(d, "PodDisruptionBudget")["spec"].update(minAvailable=1), "maxUnavailable"),
    ("policies for other pods", ["policies"],
     lambda d: kind(d, "PodDisruptionBudget")["spec"]["selector"].update(matchLabels={"app": "x"}),
     "does not select"),
    # Monitoring.
    ("the PodMonitor selects other pods", ["monitoring"],
     lambda d: kind(d, "PodMonitor")["spec"]["selector"].update(matchLabels={"app": "x"}), "does not select"),
    ("the PodMonitor scrapes the webhook port", ["monitoring"],
     lambda d: kind(d, "PodMonitor")["spec"]["podMetricsEndpoints"][0].update(port="webhooks"), "port `admin`"),
    ("an alert without severity", ["monitoring"],
     lambda d: kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["labels"].clear(), "labels.severity"),
    ("an alert without for", ["monitoring"],
     lambda d: kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"][1].pop("for"), "needs a `for`"),
    ("the PodMonitor without the release label", ["monitoring"],
     lambda d: kind(d, "PodMonitor")["metadata"]["labels"].pop("release"), "release: kube-prometheus-stack"),
    ("an alert without a runbook", ["monitoring"],
     lambda d: kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"][2]["annotations"].pop("runbook_url"),
     "needs a runbook_url"),
    ("a runbook to a section that does not exist", ["monitoring"],
     lambda d: kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["annotations"].update(
         runbook_url="https://x/README.md#nowhere"), "needs a runbook_url"),
    ("the spool alert fires on superseded entries", ["monitoring"],
     lambda d: next(r for r in kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"]
                    if r["alert"] == "PpsSidecarSpoolDropping").update(
         expr="increase(pps_sidecar_spool_dropped_total[1h]) > 0"), "superseded"),
    ("an alert removed", ["monitoring"],
     lambda d: kind(d, "PrometheusRule")["spec"]["groups"][0]["rules"].pop(0), "alerts missing"),
    ("a panel with two units", ["monitoring"],
     lambda d: kind(d, "ConfigMap")["data"].update({"pps-sidecar.json": d_json_units(kind(d, "ConfigMap"))}),
     "needs one unit"),
    ("a dashboard that is not JSON", ["monitoring"],
     lambda d: kind(d, "ConfigMap")["data"].update({"pps-sidecar.json": "{"}), "is not JSON"),
]


def d_json_units(cm):
    import json

    board = json.loads(cm["data"]["pps-sidecar.json"])
    board["panels"][0]["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": "x"}, "properties": [{"id": "unit", "value": "bytes"}]}]
    return json.dumps(board)


def kind(docs, k):
    return next(d for d in docs if d.get("kind") == k)


def self_test():
    problems, _ = run_checks()
    if problems:
        sys.exit("self-test: the manifests as they are already fail:\n" + "\n".join(problems))
    missed = []
    caught = 0
    for what, variants, mutation, expect in BREAKS:
        for variant in variants or VARIANTS:
            def mutate(v, docs, mutation=mutation, variant=variant):
                if v == variant:
                    mutation(docs)

            problems, _ = run_checks(mutate)
            if not any(expect in p for p in problems):
                missed.append(f"{variant}: {what}: no problem mentioning {expect!r} in {problems}")
            else:
                caught += 1
    if missed:
        sys.exit("self-test: breaks that were not caught:\n" + "\n".join(missed))
    print(f"self-test: {caught} breaks caught")


def validate_file(path):
    """Strict schema validation of every document of `path` (what `pps-sidecar inject` printed)."""
    import yaml

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    problems = [p for d in docs for p in schema_errors(
        f"{path} {d.get('kind')}/{(d.get('metadata') or {}).get('name')}", d, schema_versions(False))]
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(docs)} documents valid")


def main():
    global VERSION
    bootstrap()
    VERSION = cargo_version()
    args = sys.argv[1:]
    if args == ["--print-config"]:
        return print_config()
    if args == ["--print-queries"]:
        return print_queries()
    if args == ["--self-test"]:
        return self_test()
    if len(args) == 2 and args[0] == "--validate":
        return validate_file(args[1])
    if args:
        sys.exit(__doc__)
    problems, summary = run_checks()
    for line in summary:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    print("k8s manifests and Dockerfiles: ok")


if __name__ == "__main__":
    main()
