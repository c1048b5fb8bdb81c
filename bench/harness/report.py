"""The report on standard output: the header (date, commit, machine, tools), one table line per row
(medians over the rounds), the comparisons with the targets, where the sidecar's CPU goes, and the system
calls per request. A comparison whose rows were not run (ROWS=...) is left out."""

import statistics
from typing import Callable, Dict, List

from .measure import Run
from .rows import Row, connections

HEAD = "%-10s %-34s %5s %8s %15s %7s %7s %7s %6s %6s %7s %5s %5s %5s %5s %5s"


class Medians:
    """Every kept run of every row, and the medians the report prints."""

    def __init__(self, runs: List[Run]):
        self.by_row: Dict[str, List[Run]] = {}
        for r in runs:
            self.by_row.setdefault(r.row, []).append(r)

    def has(self, *rows: str) -> bool:
        return all(r in self.by_row for r in rows)

    def med(self, row: str, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in self.by_row[row])

    def rounds(self, a: str, b: str, value: Callable[[Run], float], op: str) -> str:
        """The range over the rounds of a/b (ratio) or a-b (diff) of `value`, within each round."""
        bb = {r.round: value(r) for r in self.by_row[b]}
        out = []
        for r in self.by_row[a]:
            if r.round in bb and (op == "diff" or bb[r.round] > 0):
                out.append(value(r) - bb[r.round] if op == "diff" else value(r) / bb[r.round])
        if not out:
            return ""
        return f"({min(out):+.2f}..{max(out):+.2f})" if op == "diff" else f"({min(out):.2f}..{max(out):.2f})"


RPS = lambda r: r.rps  # noqa: E731
P99 = lambda r: r.p99_us / 1e3  # noqa: E731
CPU = lambda r: r.proxy_us  # noqa: E731
USR = lambda r: r.per_request_us(r.proxy_user)  # noqa: E731
SYS = lambda r: r.per_request_us(r.proxy_sys)  # noqa: E731
APP = lambda r: r.per_request_us(r.app_ticks)  # noqa: E731


def table(rows: List[Row], m: Medians, s, retries_used: int) -> List[str]:
    out = [HEAD % ("row", "what", "conns", "req/s", "(min..max)", "p50 ms", "p99 ms", "proxy", "usr", "sys",
                   "app", "srv", "wrk", "other", "steal", "sock"),
           HEAD % ("", "", "", "", "", "", "", "us/req", "us/req", "us/req", "us/req", "core%", "core%", "max%",
                   "max%", "errs")]
    for row in rows:
        if not m.has(row.name):
            continue
        runs = m.by_row[row.name]
        rps = [r.rps for r in runs]
        proxy = [f"{m.med(row.name, f):.1f}" if row.has_proxy else "-" for f in (CPU, USR, SYS)]
        out.append("%-10s %-34s %5d %8.0f %15s %7.3f %7.3f %7s %6s %6s %7.1f %5.0f %5.0f %5.0f %5.0f %5d" % (
            row.name, row.what, connections(row, s), m.med(row.name, RPS),
            f"({min(rps):.0f}..{max(rps):.0f})", m.med(row.name, lambda r: r.p50_us / 1e3), m.med(row.name, P99),
            *proxy, m.med(row.name, APP), m.med(row.name, lambda r: r.srv_busy),
            m.med(row.name, lambda r: r.cli_busy), max(r.other for r in runs), max(r.steal for r in runs),
            sum(r.sockerr for r in runs)))
    all_runs = [r for runs in m.by_row.values() for r in runs]
    noisy = sum(1 for r in all_runs if r.other > s.noisy_limit or r.steal > s.steal_limit)
    out += [
        "",
        f"  Every figure is the median of the {s.rounds} rounds; req/s also shows the slowest and fastest round.",
        "  p50/p99: wrk --latency (at one connection: examples/one_connection.rs, timed on the monotonic clock).",
        "  All answers were 2xx (checked per run, and that the app saw every forwarded",
        "  request, none of the duplicates and nothing from B-serve). proxy/app us/req: CPU time (/proc/PID/stat)",
        "  the row's server and the app spent per request; usr and sys split the proxy's into user and system",
        "  time. srv/wrk core%: how busy the servers' CPU and wrk's CPU were (/proc/stat); a wrk core near 100%",
        "  means that row is limited by the client.",
        "  other max%: CPU used by anything but the servers and wrk during the row's worst run (% of one CPU);",
        "  steal max%: time the hypervisor took from the servers' CPU during the row's worst run.",
        f"  Noise: other processes used at most {max((r.other for r in all_runs), default=0):.0f}% of a CPU during "
        f"a kept run. {noisy} of {len(all_runs)} kept",
        f"  runs had other > {s.noisy_limit}% or steal > {s.steal_limit}%; {retries_used} noisy runs were repeated.",
    ]
    if noisy:
        out += ["  WARNING: the machine was not quiet during %d runs: these figures are noisy; run again on a" % noisy,
                "  quiet machine (QUIET_WAIT=600 waits for one)."]
    return out


def _line(name: str, value: str, rounds: str = "", target: str = "", verdict: str = "") -> str:
    return f"  {name:<46} {value:<11} {rounds:<15} {target:<11} {verdict}".rstrip()


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# (label, row a, row b, value, a/b "ratio" or a-b "diff", target, whether the figure meets it)
TARGETS = [
    ("unique ids: sidecar/nginx req/s (C/B)", "C", "B", RPS, "ratio", ">= 0.90x", lambda x: x >= 0.9),
    ("unique ids: p99 sidecar - nginx (C-B)", "C", "B", P99, "diff", "<= +1 ms", lambda x: x <= 1),
    ("duplicates/unique req/s (D/C)", "D", "C", RPS, "ratio", ">= 1.50x", lambda x: x >= 1.5),
    ("unique ids: sidecar/nginx+njs req/s (C/B-njs)", "C", "B-njs", RPS, "ratio", ">= 1.30x", lambda x: x >= 1.3),
    ("CPU per request: sidecar/nginx (C/B)", "C", "B", CPU, "ratio", "<= 1.50x", lambda x: x <= 1.5),
    ("issue 24: sidecar/nginx+njs req/s (C/B-njs)", "C", "B-njs", RPS, "ratio", ">= 1.00x", lambda x: x >= 1.0),
    ("issue 24: CPU/request sidecar/plain Pingora", "C", "B-pingora", CPU, "ratio", "<= 1.00x", lambda x: x <= 1.0),
    ("issue 24: 1 conn p99 sidecar/nginx (G)", "G-sidecar", "G-nginx", P99, "ratio", "<= 1.50x", lambda x: x <= 1.5),
]

REFERENCE = [
    ("1 connection, 1 KiB: p99 sidecar - nginx", "G-sidecar", "G-nginx", P99, "diff"),
    ("1 KiB: nginx+njs/nginx req/s (B-njs/B)", "B-njs", "B", RPS, "ratio"),
    ("1 KiB: CPU/request nginx+njs/nginx", "B-njs", "B", CPU, "ratio"),
    ("1 KiB: sidecar/plain Pingora req/s", "C", "B-pingora", RPS, "ratio"),
    ("1 KiB: CPU/request plain Pingora/nginx", "B-pingora", "B", CPU, "ratio"),
    ("1 KiB: CPU/request sidecar - plain Pingora", "C", "B-pingora", CPU, "cpudiff"),
    ("64 KiB: sidecar/nginx+njs req/s", "E-sidecar", "E-njs", RPS, "ratio"),
    ("64 KiB: sidecar/plain Pingora req/s", "E-sidecar", "E-pingora", RPS, "ratio"),
    ("64 KiB: CPU/request sidecar/nginx", "E-sidecar", "E-nginx", CPU, "ratio"),
    ("64 KiB: sidecar/nginx req/s", "E-sidecar", "E-nginx", RPS, "ratio"),
    ("64 KiB: p99 sidecar - nginx", "E-sidecar", "E-nginx", P99, "diff"),
    ("1 MiB: sidecar/nginx req/s", "F-sidecar", "F-nginx", RPS, "ratio"),
    ("1 MiB: p99 sidecar - nginx", "F-sidecar", "F-nginx", P99, "diff"),
    ("dedup store: CPU/request on - off (C - C-nodedup)", "C", "C-nodedup", CPU, "cpudiff"),
    ("dedup store: req/s on/off (C/C-nodedup)", "C", "C-nodedup", RPS, "ratio"),
    ("tracing: CPU/request on - off (C-traced - C)", "C-traced", "C", CPU, "cpudiff"),
    ("tracing: req/s on/off (C-traced/C)", "C-traced", "C", RPS, "ratio"),
    ("tracing: p99 on - off (C-traced - C)", "C-traced", "C", P99, "diff"),
]


def _compare(m: Medians, a: str, b: str, value, op: str):
    """(number, printed value, per-round range)"""
    va, vb = m.med(a, value), m.med(b, value)
    if op == "ratio":
        x = va / vb if vb > 0 else 0.0
        return x, f"{x:.2f}x", m.rounds(a, b, value, "ratio")
    x = va - vb
    unit = "us" if op == "cpudiff" else "ms"
    shown = f"{x:+.1f} us" if unit == "us" else f"{x:+.3f} ms"
    return x, shown, m.rounds(a, b, value, "diff")


def comparisons(m: Medians, rates, filled, rss_main) -> List[str]:
    out = []
    for label, a, b, value, op, target, meets in TARGETS:
        if not m.has(a, b):
            continue
        x, shown, rng = _compare(m, a, b, value, op)
        out.append(_line(label, shown, rng, target, _verdict(meets(x))))
        if label.startswith("CPU per request: sidecar/nginx"):
            out.append(cpu_summary(m))
    if rates is not None:
        r = rates.ours / rates.openssl_sha256
        out.append(_line("HMAC-SHA256 1 MiB: sidecar crates/openssl", f"{r:.2f}x", "", ">= 0.80x", _verdict(r >= 0.8)))
        out.append(f"      sidecar crates (hmac 0.12 + sha2 0.10, bench/hmac-rate): {rates.ours:.1f} MB/s")
        hm = f"{rates.openssl_hmac:.1f}" if rates.openssl_hmac is not None else "n/a"
        out.append(f"      openssl speed -evp sha256 -bytes 1048576:                {rates.openssl_sha256:.1f} MB/s "
                   f"(hmac(sha256): {hm} MB/s)")
    if filled is not None:
        idle_mb = filled.rss_idle_kb / 1024
        out.append(_line("sidecar RSS idle after start", f"{idle_mb:.1f} MB", "", "<= 20 MB", _verdict(idle_mb <= 20)))
        out.append(_line(f"bytes per remembered id at {filled.ids} ids", f"{filled.bytes_per_id:.0f} B", "",
                         "<= 200 B", _verdict(filled.bytes_per_id <= 200)))
        gauge = f"; pps_sidecar_dedup_entries {filled.gauge}" if filled.gauge else ""
        out.append(f"      RSS idle {filled.rss_idle_kb} kB -> {filled.rss_kb} kB (peak {filled.hwm_kb} kB) after "
                   f"{filled.ids} ids (counted by the app) in {filled.seconds} s{gauge}")
    if out:
        out.insert(0, _line("comparison (medians)", "value", "(each round)", "target", "verdict"))
    if rss_main is not None:
        out.append(f"      (sidecar of the rounds: RSS {rss_main[0]} kB after start and sanity checks, "
                   f"{rss_main[1]} kB after all rows)")
    ref = [_line(label, *_compare(m, a, b, value, op)[1:]) for label, a, b, value, op in REFERENCE if m.has(a, b)]
    if ref:
        out += ["", _line("for reference (no target)", "")] + ref
    return out


def cpu_summary(m: Medians) -> str:
    names = [("C", "sidecar"), ("B", "nginx"), ("B-njs", "nginx+njs"), ("B-pingora", "plain Pingora"),
             ("B-serve", "Pingora server"), ("B-client", "Pingora server + client")]
    parts = [f"{label} {m.med(row, CPU):.1f} us" for row, label in names if m.has(row)]
    return "      proxy CPU per 1 KiB request: " + ", ".join(parts)


# Where the sidecar's CPU per 1 KiB delivery goes: each step adds one layer to the one before. With row
# C-nodedup, the sidecar's own work is split into the dedup store and the rest.
FLOOR = [
    ("Pingora's HTTP server alone (B-serve)", "B-serve", None),
    ("+ the sidecar's client to the app (B-client)", "B-client", "B-serve"),
]
OWN = [("+ the sidecar's own work (C)", "C", "B-client")]
OWN_SPLIT = [
    ("+ verify, headers, access log, metrics (C-nodedup)", "C-nodedup", "B-client"),
    ("+ the dedup store, memory (C)", "C", "C-nodedup"),
]


def breakdown(m: Medians) -> List[str]:
    if not m.has("B-serve", "B-client", "C"):
        return []
    out = ["", "  where the sidecar's CPU per 1 KiB delivery goes (proxy us/req, medians: total = user + system)"]
    for label, row, below in FLOOR + (OWN_SPLIT if m.has("C-nodedup") else OWN):
        if below is None:
            t, u, y = (m.med(row, f) for f in (CPU, USR, SYS))
            out.append(f"  {label:<52} {t:7.1f} = {u:6.1f} + {y:6.1f}")
        else:
            t, u, y = (m.med(row, f) - m.med(below, f) for f in (CPU, USR, SYS))
            out.append(f"  {label:<52} {t:+7.1f} = {u:+6.1f} + {y:+6.1f}  {m.rounds(row, below, CPU, 'diff')}")
    t, u, y = (m.med("C", f) for f in (CPU, USR, SYS))
    out.append(f"  {'= the sidecar (C)':<52} {t:7.1f} = {u:6.1f} + {y:6.1f}")
    refs = []
    if m.has("A"):
        refs.append(f"nginx return 200 (A, the app) {m.med('A', APP):.1f}")
    for row, label in (("B", "nginx proxy_pass"), ("B-pingora", "plain Pingora proxy")):
        if m.has(row):
            refs.append(f"{label} {m.med(row, CPU):.1f} = {m.med(row, USR):.1f} + {m.med(row, SYS):.1f}")
    if refs:
        out.append("  for reference: " + "; ".join(refs))
    if m.has("B-pingora"):
        t = m.med("B-pingora", CPU) - m.med("B-client", CPU)
        out.append(f"  ProxyHttp with Pingora's connector, streaming, against ServeHttp with our client "
                   f"(B-pingora - B-client): {t:+.1f} us {m.rounds('B-pingora', 'B-client', CPU, 'diff')}")
    return out


def syscalls(counted) -> List[str]:
    if not counted:
        return []
    c0 = counted[0]
    how = ("perf stat on the syscall tracepoints" if c0.tool == "perf" else "strace -c -f, which slows the server")
    out = ["", f"  system calls per request of the row's server ({how}; one extra run per row, not timed)",
           "  %-10s %6s %6s %6s %6s  %s" % ("row", "calls", "failed", "EAGAIN", "ctxsw",
                                            "the most frequent, per request")]
    for c in counted:
        n = c.requests
        top = sorted(c.calls.items(), key=lambda kv: -kv[1])[:7]
        calls = ", ".join(f"{name} {k / n:.2f}" + (f" ({c.failed[name] / n:.2f} failed)" if name in c.failed else "")
                          for name, k in top if k / n >= 0.005)
        opt = lambda v: f"{v / n:6.2f}" if v is not None else "     -"  # noqa: E731
        out.append("  %-10s %6.2f %6.2f %s %s  %s" % (c.row, c.total / n, c.errors / n, opt(c.eagain),
                                                       opt(c.switches), calls))
    return out


def header(info: Dict[str, str]) -> List[str]:
    out = ["pps-sidecar benchmark"]
    for key in ("date", "commit", "machine", "tools", "pinning", "before", "load", "logs", "rows"):
        if info.get(key):
            out.append(f"  {key + ':':<9} {info[key]}")
    return out + [""]


def render(info, rows, medians, s, retries_used, rates, filled, rss_main, counted, notes=()) -> str:
    lines = header(info) + table(rows, medians, s, retries_used) + [""]
    lines += comparisons(medians, rates, filled, rss_main) + breakdown(medians) + syscalls(counted)
    lines += [f"  {n}" for n in notes if n]
    return "\n".join(lines) + "\n"

