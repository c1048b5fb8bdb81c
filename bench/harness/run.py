"""bench/run, phase by phase: install, build, start the peers, check them, load them in interleaved
rounds, count system calls, fill the dedup cache, report. Progress goes to standard error, the report to
standard output."""

import os
import platform
import shutil
import subprocess
import time
from typing import Dict, List

from . import frame, hmac_rate, memory, peers, report, syscalls
from .context import Bench, port_open
from .host import NPROC, BenchError, apt_install, log, missing, rss_kb, wait_quiet
from .measure import Measurer
from .peers import nginx
from .rows import Row, connections, select
from .wrk import ONE_CONNECTION


def main(root: str) -> int:
    return frame.run(root, plan)


def plan(s):
    rows = select(s.rows)
    needed = needed_peers(rows, s)
    install(s, needed)
    examples = [p.example for p in peers.ALL if p.key in needed and p.example]
    if any(connections(r, s) == 1 for r in rows):
        examples.append(ONE_CONNECTION)
    return examples, s.hmac_rate, lambda bench: measure(bench, rows, needed)


def needed_peers(rows: List[Row], s) -> List[str]:
    """The peers the rows name, the app (everything forwards to it) and the sidecar (the memory phase,
    and `pps-sidecar sign` checks the signatures), in start order."""
    keys = {"app", "sidecar"} | {r.peer for r in rows}
    return [p.key for p in peers.ALL if p.key in keys]


def install(s, needed: List[str]) -> None:
    need = missing({"wrk": "wrk", "openssl": "openssl"})
    if shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK):
        need += nginx.packages()
    if "njs" in needed and not s.njs_module and not os.path.exists("/usr/lib/nginx/modules/ngx_http_js_module.so"):
        need.append("libnginx-mod-http-js")
    apt_install(need)


def measure(bench: Bench, rows: List[Row], needed: List[str]) -> str:
    s = bench.s
    for key in needed:
        bench.peers[key] = peers.BY_KEY[key](bench)
    taken = [p for peer in bench.peers.values() for p in peer.ports() if port_open(p)]
    if taken:
        raise BenchError(f"port {taken[0]} on 127.0.0.1 is in use: choose another PORT_BASE")
    busy_before = wait_quiet(s.quiet_wait)
    rates = hmac_rate.measure(bench, bench.built.hmac_rate) if s.hmac_rate else None
    bench.make_bodies(bench.built.sidecar)
    for peer in bench.peers.values():
        peer.start()
    log("sanity checks")
    for peer in bench.peers.values():
        peer.sanity()
    sidecar_pid = bench.peers["sidecar"].proc.pid
    rss_start = rss_kb(sidecar_pid)

    m = Measurer(bench)
    if s.warmup > 0:
        log(f"warm-up: every row for {s.warmup} s")
        for row in rows:
            m.run(row, "warmup", s.warmup)
    for rnd in range(1, s.rounds + 1):
        log(f"round {rnd} of {s.rounds}: {len(rows)} rows x {s.duration} s")
        for row in rows:
            m.run(row, str(rnd), s.duration)
    rss_main = (rss_start, rss_kb(sidecar_pid))
    m.save(os.path.join(bench.tmp, "results.tsv"))

    counted = []
    tool = syscalls.choose(s.syscalls)
    if tool:
        log(f"system calls per request: one {s.syscall_seconds} s run per row, counted with {tool}")
        counter = syscalls.Counter(bench, tool)
        for row in rows:
            counted.append(counter.count(row))
    filled = memory.fill(bench) if s.fill_ids > 0 else None

    notes = [peer.note() for peer in bench.peers.values()]
    text = report.render(info(bench, rows, busy_before), rows, report.Medians(m.runs), s, m.retries_used, rates,
                         filled, rss_main, counted, notes)
    with open(os.path.join(bench.tmp, "report.txt"), "w") as f:
        f.write(text)
    return text


def _first_line(argv: List[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    except OSError:
        return ""
    return ((r.stdout or r.stderr).splitlines() or [""])[0]


def info(bench: Bench, rows: List[Row], busy_before: float) -> Dict[str, str]:
    s = bench.s
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(": ", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown CPU")
    with open("/proc/meminfo") as f:
        mem = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) / 1048576
    njs = bench.peers.get("njs")
    tools = [
        "wrk " + (_first_line(["wrk", "-v"]).split() + ["?", "?"])[1],
        nginx.version() + (f" with {njs.describe()}" if njs else ""),
        f"Pingora {bench.built.pingora_version}",
        "OpenSSL " + (_first_line(["openssl", "version"]).split() + ["?", "?"])[1],
        "rustc " + (_first_line(["rustc", "--version"]).split() + ["?", "?"])[1],
    ]
    if bench.server_cpus:
        pinning = (f"wrk on CPU {s.client_cpus}; every server (app, proxies, sidecar) on CPU {s.server_cpus} "
                   "(sched_setaffinity)")
    else:
        pinning = f"none (PIN={int(s.pin)}, {NPROC} CPUs): wrk and the servers share all CPUs"
    logs = ("on: sidecar RUST_LOG=info (one access line per request), nginx proxy and nginx+njs access_log"
            if s.logs else "off: sidecar RUST_LOG=warn, nginx access_log off")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": bench.built.commit,
        "machine": f"{NPROC} CPUs, {model}, {mem:.1f} GiB RAM, kernel {platform.release()}",
        "tools": ", ".join(tools),
        "pinning": pinning,
        "before": f"machine {busy_before:.0f}% busy in the 2 s before the benchmark (other processes)",
        "load": (f"wrk -t{s.threads}, {s.connections} connections ({s.big_connections} for 1 MiB), {s.duration} s "
                 f"per run, {s.rounds} interleaved rounds, {s.warmup} s warm-up per row"),
        "logs": logs + " (the Pingora examples: none)",
        "rows": " ".join(r.name for r in rows) if s.rows else "",
    }
