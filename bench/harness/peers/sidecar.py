"""pps-sidecar as measured: threads = 1, HMAC with an inline secret, dedup on (memory, 1,000,000 ids),
the app's connections kept 60 s, everything else at its default. The access log is on as shipped
(RUST_LOG=info, one line per request to standard error, redirected to a file); LOGS=0: warn."""

import os
import subprocess

from ..host import BenchError
from .base import Peer

CONFIG = """# Written by bench/run. Everything not set here is the shipped default (conf/sidecar.toml).
[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
threads = 1

[upstream]
address = "127.0.0.1:{app}"
# The app keeps connections 300 s; the pool must not drop them during a run.
keepalive_timeout_ms = 60000

[webhooks]
paths = ["/webhooks"]
max_body_bytes = 1048576

[auth]
methods = ["hmac"]
enforce = true

[auth.hmac]
secrets = [{{ value = "{secret}" }}]

[dedup]
enabled = true
backend = "memory"
max_entries = 1000000
"""


def write_config(bench) -> str:
    """The sidecar's configuration file (also read by the pingora_client peer for its [upstream]),
    checked with `pps-sidecar check`."""
    d = os.path.join(bench.tmp, "sidecar")
    path = os.path.join(d, "sidecar.toml")
    if not os.path.exists(path):
        os.makedirs(d, exist_ok=True)
        with open(path, "w") as f:
            f.write(CONFIG.format(listen=bench.port(Sidecar.port_offset), admin=bench.port(Sidecar.admin_offset),
                                  app=bench.port(1), secret=bench.secret))
        r = subprocess.run([bench.built.sidecar, "check", "--config", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"pps-sidecar check: {(r.stdout + r.stderr).strip()}")
    return path


class SidecarProcess(Peer):
    """A process of the sidecar's binary with its webhook and admin ports (the rows C, C-nodedup, C-traced)."""
    admin_offset = 0

    @property
    def admin_port(self) -> int:
        return self.bench.port(self.admin_offset)

    def ports(self):
        return [self.port, self.admin_port]

    def derived_config(self, name: str, edit) -> str:
        """The `sidecar` peer's file on this process's ports, changed by `edit` (text -> text), written to
        the temporary directory's `name/`."""
        b = self.bench
        with open(write_config(b)) as f:
            base = f.read()
        text = edit(base.replace(f":{b.port(Sidecar.port_offset)}\"", f":{self.port}\"")
                    .replace(f":{b.port(Sidecar.admin_offset)}\"", f":{self.admin_port}\""))
        d = os.path.join(b.tmp, name)
        os.makedirs(d, exist_ok=True)
        config = os.path.join(d, "sidecar.toml")
        with open(config, "w") as f:
            f.write(text)
        return config

    def launch(self, config: str, name: str) -> None:
        """Runs the sidecar on `config`, its log in `name/sidecar.log`, until its admin port answers."""
        b = self.bench
        env = {"RUST_LOG": "info" if b.s.logs else "warn"}
        self.start_binary([b.built.sidecar, "run", "--config", config], f"{name}/sidecar.log", env)
        b.wait_port(self.admin_port, self.proc, f"{self.title} (admin)", 120 if self.wrapper else 10)


class Sidecar(SidecarProcess):
    key = "sidecar"
    title = "pps-sidecar"
    port_offset = 4
    admin_offset = 5

    def start(self) -> None:
        self.launch(write_config(self.bench), "sidecar")

    def restart(self) -> None:
        """A fresh process: nothing remembered, for the memory phase."""
        self.bench.stop(self.proc)
        self.start()

    def dedup_entries(self) -> str:
        _, _, text = self.bench.get(self.admin_port, "/metrics")
        for line in text.splitlines():
            if line.startswith("pps_sidecar_dedup_entries"):
                return line.split()[1]
        return ""

    def sanity(self) -> None:
        """Signed 1 MiB and 1 KiB deliveries are answered 200; the same delivery again is a duplicate;
        a forged one is refused (so authentication really is on). Then each wrk mode, briefly: a bad
        signature or a malformed request would show as a non-2xx and stop here, and `dup` and `static`
        send one id, which the app must see once."""
        b = self.bench
        b.expect("sidecar, signed 1 MiB", 200, b.post(self.port, "1m", "sanity-c", b.sigs["1m"]))
        b.expect("sidecar, signed 1 KiB", 200, b.post(self.port, "1k", "sanity-d", b.sigs["1k"]))
        again = b.expect("sidecar, the same delivery again", 200, b.post(self.port, "1k", "sanity-d", b.sigs["1k"]))
        if again.get("x-pps-duplicate") != "true":
            raise BenchError("sanity: a repeated delivery was not answered as a duplicate")
        b.expect("sidecar, forged signature", 403, b.post(self.port, "1k", "sanity-e", b.sigs["64k"]))
        for mode in ("unique", "dup", "static"):
            before = b.app_requests()
            sent = b.wrk.run(f"sanity-{mode}", self.port, "1k", mode, 2, 1)["requests"]
            seen = b.app_since(before, settle=0.2)
            if mode == "unique" and seen < sent:
                raise BenchError(f"sanity: {sent} unique deliveries, but only {seen} reached the app")
            if mode != "unique" and seen != 1:
                raise BenchError(f"sanity: {mode} mode: {seen} requests reached the app instead of 1")
