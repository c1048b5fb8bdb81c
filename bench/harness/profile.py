"""bench/profile: one row (PROFILE_ROW, default C: the sidecar, unique 1 KiB deliveries) under load, its
server profiled, the symbols grouped by component (components.py).

PROFILER=perf (the default): `perf record -e cpu-clock` samples the server's threads, kernel included, for
PROFILE_SECONDS; each component's share of the samples is also given in microseconds of CPU per request
(the server's user + system time over the same window, /proc/PID/stat). On a VM without hardware counters
cpu-clock is a timer: the shares are statistical, and a noisy machine moves them.

PROFILER=callgrind: the server runs under valgrind --tool=callgrind, instrumented only for the measured
window (after the sanity checks and WARMUP); the figure is instructions per request, which does not depend
on what else the machine is doing. valgrind sees no kernel time and does not emulate SHA-NI (the HMAC is
counted in software, several times its real share); it runs the server 20 to 50 times slower."""

import glob
import os
import re
import signal
import subprocess
import time
from typing import Dict, List, Tuple

from . import components, frame
from .context import Bench, port_open
from .host import BenchError, apt_install, cpu_ticks, log, missing, per_request, wait_quiet
from .peers import BY_KEY, nginx
from .rows import connections, select


def main(root: str) -> int:
    return frame.run(root, plan)


def plan(s):
    rows = select([os.environ.get("PROFILE_ROW", "C")])
    if len(rows) != 1 or rows[0].peer not in ("sidecar", "traced", "nodedup", "plain", "serve", "client"):
        raise BenchError("PROFILE_ROW must name one row of a Rust peer (C, C-nodedup, C-traced, D, B-pingora, B-serve, B-client...)")
    row = rows[0]
    install(s)
    example = BY_KEY[row.peer].example
    return ([example] if example else []), False, lambda bench: profile(bench, row)


def install(s) -> None:
    need = missing({"wrk": "wrk"}) + (nginx.packages() if missing({"nginx": "nginx"}) else [])
    need += missing({"perf": "linux-perf"} if s.profiler == "perf" else
                    {"valgrind": "valgrind", "callgrind_control": "valgrind"})
    apt_install(sorted(set(need)))


def profile(bench: Bench, row) -> str:
    s = bench.s
    for key in ("app", row.peer):  # the app first: the others forward to it
        bench.peers[key] = BY_KEY[key](bench)
    target = bench.peers[row.peer]
    out_dir = bench.tmp
    if s.profiler == "callgrind":
        target.wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={out_dir}/callgrind.out"]
    taken = [p for peer in bench.peers.values() for p in peer.ports() if port_open(p)]
    if taken:
        raise BenchError(f"port {taken[0]} on 127.0.0.1 is in use: choose another PORT_BASE")
    bench.make_bodies(bench.built.sidecar)
    for peer in bench.peers.values():
        peer.start()
    target.sanity()
    wait_quiet(s.quiet_wait)
    if s.warmup:
        log(f"warm-up: {row.name} for {s.warmup} s")
        bench.wrk.run(f"warmup-{row.name}", target.port, row.body, row.mode, connections(row, s), s.warmup)
    pid = target.proc.pid
    if s.profiler == "perf":
        groups, requests, note = perf(bench, row, target, pid)
    else:
        groups, requests, note = callgrind(bench, row, target, pid)
    return render(row, groups, requests, note, s.profiler, bench.built.commit)


def _load(bench, row, target) -> int:
    r = bench.wrk.run(f"profile-{row.name}", target.port, row.body, row.mode, connections(row, bench.s),
                      bench.s.profile_seconds)
    return r["requests"]


def perf(bench, row, target, pid) -> Tuple[Dict[str, List[Tuple[str, float]]], int, str]:
    data = os.path.join(bench.tmp, "perf.data")
    log(f"perf record -e cpu-clock on {target.title} (pid {pid}) for {bench.s.profile_seconds} s of {row.name}")
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p", str(pid), "-o", data],
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(bench.tmp, "perf-record.log"), "w"))
    time.sleep(0.5)  # perf gives no sign of being attached
    t0 = cpu_ticks([pid])
    requests = _load(bench, row, target)
    t1 = cpu_ticks([pid])
    rec.send_signal(signal.SIGINT)
    rec.wait(60)
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                          "--percent-limit", "0"], capture_output=True, text=True)
    with open(os.path.join(bench.tmp, "perf-report.txt"), "w") as f:
        f.write(rep.stdout)
    samples = []
    for line in rep.stdout.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            samples.append((float(m.group(1)), m.group(2), m.group(3) == "k", m.group(4)))
    if not samples:
        raise BenchError(f"perf report gave no samples (see {bench.tmp})")
    user_us = per_request((t1[0] - t0[0]), requests)
    sys_us = per_request((t1[1] - t0[1]), requests)
    groups: Dict[str, List[Tuple[str, float]]] = {}
    for pct, dso, kernel, sym in samples:
        groups.setdefault(components.component(sym, dso, kernel), []).append((sym, pct))
    note = (f"{user_us + sys_us:.1f} us of CPU per request ({user_us:.1f} user + {sys_us:.1f} system, "
            "/proc/PID/stat over the same window); a share of 1% is "
            f"{(user_us + sys_us) / 100:.2f} us")
    return groups, requests, note


def callgrind(bench, row, target, pid) -> Tuple[Dict[str, List[Tuple[str, float]]], int, str]:
    log(f"callgrind: instrumenting {target.title} (pid {pid}) for {bench.s.profile_seconds} s of {row.name}")
    for args in (["-i", "on"], ["-z"]):
        subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)
    requests = _load(bench, row, target)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], stdout=subprocess.DEVNULL)
    dumps = sorted(glob.glob(os.path.join(bench.tmp, "callgrind.out*")), key=os.path.getmtime)
    if not dumps:
        raise BenchError(f"callgrind wrote no profile (see {bench.tmp})")
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", dumps[-1]],
                         capture_output=True, text=True)
    with open(os.path.join(bench.tmp, "callgrind-annotate.txt"), "w") as f:
        f.write(ann.stdout)
    total = 0
    rows = []
    for line in ann.stdout.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(\([\s\d.]+%\)\s+)?(.*?)\s*$", line)
        if not m or ":" not in m.group(3):
            continue
        ir = int(m.group(1).replace(",", ""))
        where = m.group(3)
        if where.startswith("PROGRAM TOTALS"):
            total = ir
            continue
        func = where.split(":", 1)[1]
        obj = re.search(r"\[(.*)\]$", func)
        func = re.sub(r"\s*\[.*\]$", "", func)
        rows.append((ir, func, obj.group(1) if obj else ""))
    if total == 0:
        total = sum(r[0] for r in rows)
    groups: Dict[str, List[Tuple[str, float]]] = {}
    for ir, func, obj in rows:
        groups.setdefault(components.component(func, os.path.basename(obj)), []).append((func, 100.0 * ir / total))
    note = (f"{total / requests:,.0f} instructions per request (callgrind, {requests} requests); a share of 1% "
            f"is {total / requests / 100:,.0f} instructions")
    return groups, requests, note


def render(row, groups, requests, note, profiler, commit) -> str:
    out = [f"profile of row {row.name} ({row.what}), {profiler}, commit {commit}", f"  {note}", "",
           f"  {'component':<18} {'share':>7}   the largest symbols in it (share)"]
    shares = {c: sum(p for _, p in syms) for c, syms in groups.items()}
    for c in sorted(shares, key=lambda c: -shares[c]):
        top = sorted(groups[c], key=lambda t: -t[1])[:3]
        names = "; ".join(f"{_short(sym)} {p:.1f}" for sym, p in top)
        out.append(f"  {c:<18} {shares[c]:6.1f}%   {names}")
    return "\n".join(out) + "\n"


def _short(symbol: str, width: int = 60) -> str:
    s = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    return s if len(s) <= width else s[:width - 3] + "..."
