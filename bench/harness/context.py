"""What every phase shares: the temporary directory, the processes started, the bodies and their
signatures, the app's request counter, and a plain HTTP client for the sanity checks."""

import hashlib
import hmac
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from .host import BenchError, expand_cpus, log
from .settings import Settings

SIZES = {"1k": 1024, "64k": 65536, "1m": 1048576}


class Bench:
    def __init__(self, settings: Settings, root: str):
        self.s = settings
        self.root = root
        self.bench_dir = os.path.join(root, "bench")
        self.tmp = tempfile.mkdtemp(prefix="pps-bench.")
        self.procs: List[subprocess.Popen] = []
        self.peers: Dict[str, object] = {}  # key -> peers.base.Peer, in start order
        self.secret = "bench-" + secrets.token_hex(16)
        self.bodies: Dict[str, str] = {}
        self.sigs: Dict[str, str] = {}
        self.built = None  # build.Built: the binaries, set once they are built
        self.wrk = None  # wrk.Wrk, set with the binaries
        pin = settings.pin and (os.cpu_count() or 1) >= 2
        self.server_cpus = expand_cpus(settings.server_cpus) if pin else None
        self.client_cpus = expand_cpus(settings.client_cpus) if pin else None

    # ---- processes ---------------------------------------------------------------------------------------

    def start(self, argv: List[str], log_name: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """Starts a server pinned to the servers' CPUs (its threads and children inherit it), its output
        appended to `log_name` in the temporary directory. It is stopped when the benchmark ends."""
        cpus = self.server_cpus
        out = open(os.path.join(self.tmp, log_name), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, **(env or {})), start_new_session=True,
                             preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self, failed: bool) -> None:
        for p in list(self.procs):
            self.stop(p)
        if self.s.keep or failed:
            log(f"temporary files kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_port(self, port: int, p: subprocess.Popen, name: str, seconds: int = 10) -> None:
        for _ in range(seconds * 10):
            if port_open(port):
                return
            if p.poll() is not None:
                raise BenchError(f"{name} exited at start (see {self.tmp})")
            time.sleep(0.1)
        raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {seconds} s")

    def on_client(self):
        """A `preexec_fn` that pins a load generator to the client's CPUs (None: no pinning)."""
        cpus = self.client_cpus
        return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None

    # ---- ports -------------------------------------------------------------------------------------------

    def port(self, offset: int) -> int:
        return self.s.port_base + offset

    # ---- bodies and signatures ---------------------------------------------------------------------------

    def make_bodies(self, sidecar_bin: str) -> None:
        """A JSON body of exactly 1 KiB, 64 KiB and 1 MiB, each signed here and by `pps-sidecar sign`,
        which must agree (a mismatch would show as 403s under load)."""
        head = b'{"topic":"orders/placed","tenant":"OU1243","order":{"id":"ORD-000123","total":"99.90",' \
               b'"currency":"EUR"},"pad":"'
        tail = b'"}'
        for size, n in SIZES.items():
            body = head + b"x" * (n - len(head) - len(tail)) + tail
            path = os.path.join(self.tmp, f"body-{size}.json")
            with open(path, "wb") as f:
                f.write(body)
            sig = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            out = subprocess.run([sidecar_bin, "sign", "--body", path, "--secret-value", self.secret,
                                  "--webhook-id", "x"], capture_output=True, text=True).stdout
            ours = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("X-Pps-Hmac-Sha256: ")]
            if ours != [sig]:
                raise BenchError(f"pps-sidecar sign ({ours}) and Python's hmac ({sig}) disagree on {size}")
            self.bodies[size] = path
            self.sigs[size] = sig

    # ---- the app's counter, requests -------------------------------------------------------------------

    def app_requests(self) -> int:
        """Requests the app has handled so far; nginx's stub_status counts this request too."""
        status, _, text = self.get(self.peers["app"].status_port, "/")
        lines = text.splitlines()
        try:
            return int(lines[2].split()[2])
        except (IndexError, ValueError):
            raise BenchError(f"cannot read the app's request counter ({status})") from None

    def get(self, port: int, path: str) -> Tuple[int, Dict[str, str], str]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
        except OSError as e:
            raise BenchError(f"GET 127.0.0.1:{port}{path}: {e}") from None
        finally:
            c.close()

    def post(self, port: int, size: str, webhook_id: str, sig: Optional[str]) -> Tuple[int, Dict[str, str]]:
        """A delivery as Pitchpoint sends it (sig None: no signature header): (status, headers)."""
        with open(self.bodies[size], "rb") as f:
            body = f.read()
        headers = {
            "Content-Type": "application/json", "X-Pps-Topic": "orders/placed", "X-Pps-Tenant-Id": "OU1243",
            "X-Pps-Webhook-Id": webhook_id, "X-Pps-Triggered-At": "2024-01-1T10:00:00.7777748Z",
        }
        if sig is not None:
            headers["X-Pps-Hmac-Sha256"] = sig
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("POST", "/webhooks", body=body, headers=headers)
            r = c.getresponse()
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
        except OSError as e:
            raise BenchError(f"POST 127.0.0.1:{port}/webhooks: {e}") from None
        finally:
            c.close()

    def expect(self, what: str, want: int, got: Tuple[int, Dict[str, str]]) -> Dict[str, str]:
        if got[0] != want:
            raise BenchError(f"sanity: {what}: expected {want}, got {got[0]}")
        return got[1]

    def app_since(self, before: int, settle: float = 0.0) -> int:
        """Requests that reached the app since the counter read `before` (neither read counted). `settle`:
        after a wrk run, let the requests in flight when it stopped reach the app first."""
        if settle:
            time.sleep(settle)
        return self.app_requests() - before - 1

    def app_delta(self, action) -> int:
        """How many requests reached the app while `action()` ran (its answers came back, so it did)."""
        before = self.app_requests()
        action()
        return self.app_since(before)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
