"""One measured run of a row: wrk's figures, the CPU the row's server and the app used (user and system
apart, /proc/PID/stat), how busy each CPU was (/proc/stat), the noise, and the app's counter.

A run during which other processes used more than NOISY_LIMIT % of a CPU, or the hypervisor stole more than
STEAL_LIMIT % of the servers' CPU, is run again, NOISY_RETRIES times at most; the last attempt is kept and
the report counts it as noisy."""

import time
from dataclasses import asdict, dataclass, fields
from typing import List, Optional

from .host import NPROC, BenchError, per_request, busy_pct, core_jiffies, cpu_ticks, log, steal_pct
from .rows import Row, connections


@dataclass
class Run:
    row: str
    round: str
    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    sockerr: int
    app_delta: int
    proxy_user: int  # clock ticks
    proxy_sys: int
    app_ticks: int
    srv_busy: float
    cli_busy: float
    steal: float
    other: float

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    def per_request_us(self, ticks: int) -> float:
        return per_request(ticks, self.requests)

    @property
    def proxy_us(self) -> float:
        return self.per_request_us(self.proxy_user + self.proxy_sys)


class Measurer:
    def __init__(self, bench):
        self.bench = bench
        self.runs: List[Run] = []
        self.retries_used = 0
        self.server_cores = bench.server_cpus  # None: not pinned, the whole machine
        self.client_cores = bench.client_cpus

    def all_server_pids(self) -> List[int]:
        return [p for peer in self.bench.peers.values() for p in peer.pids() + peer.helper_pids()]

    def run(self, row: Row, rnd: str, secs: int) -> Optional[Run]:
        """One kept run of `row` (None for a warm-up), repeated while noisy."""
        s = self.bench.s
        for attempt in range(s.noisy_retries + 1):
            run = self.once(row, rnd, secs)
            if rnd == "warmup":
                return None
            if run.other <= s.noisy_limit and int(run.steal) <= s.steal_limit:
                break
            if attempt == s.noisy_retries:
                break
            log(f"  other processes used {run.other:.0f}% of a CPU, the hypervisor stole {run.steal:.0f}% of "
                "the servers' CPU: repeating that run")
            self.retries_used += 1
        self.runs.append(run)
        return run

    def once(self, row: Row, rnd: str, secs: int) -> Run:
        b = self.bench
        peer = b.peers[row.peer]
        proxy_pids = peer.pids() if row.has_proxy else []
        app_pids = b.peers["app"].pids()
        a0 = b.app_requests()
        sj0, cj0, aj0 = core_jiffies(self.server_cores), core_jiffies(self.client_cores), core_jiffies(None)
        st0 = sum(cpu_ticks(self.all_server_pids()))
        ac0, pc0 = sum(cpu_ticks(app_pids)), cpu_ticks(proxy_pids)
        r = b.wrk.run(row.name, peer.port, row.body, row.mode, connections(row, b.s), secs)
        st1 = sum(cpu_ticks(self.all_server_pids()))
        aj1, sj1, cj1 = core_jiffies(None), core_jiffies(self.server_cores), core_jiffies(self.client_cores)
        # Everything else the machine did meanwhile (other processes), as % of one CPU: noise to watch for.
        per_cpu = (aj1[1] - aj0[1]) / NPROC
        other = 100.0 * ((aj1[0] - aj0[0]) - (st1 - st0) - r["wrk_ticks"]) / per_cpu if per_cpu > 0 else 0.0
        time.sleep(0.2)  # let requests in flight when wrk stopped reach the app
        ac1, pc1 = sum(cpu_ticks(app_pids)), cpu_ticks(proxy_pids)
        seen = b.app_since(a0)
        check_app(row, seen, r["requests"])
        run = Run(row.name, rnd, r["requests"], r["duration_us"], r["p50_us"], r["p99_us"], r["sockerr"], seen,
                  pc1[0] - pc0[0], pc1[1] - pc0[1], ac1 - ac0, busy_pct(sj0, sj1), busy_pct(cj0, cj1),
                  steal_pct(sj0, sj1), max(other, 0.0))
        log(f"  {row.name:<10} round {rnd:<6} {run.rps:9.0f} req/s  p50 {run.p50_us / 1e3:7.3f} ms  "
            f"p99 {run.p99_us / 1e3:7.3f} ms  servers {run.srv_busy:3.0f}% busy, wrk {run.cli_busy:3.0f}%, "
            f"other {run.other:3.0f}%, steal {run.steal:3.0f}%")
        return run

    def save(self, path: str) -> None:
        """results.tsv: every kept run, one line each (KEEP=1 keeps it)."""
        names = [f.name for f in fields(Run)]
        with open(path, "w") as f:
            f.write("\t".join(names) + "\n")
            for run in self.runs:
                f.write("\t".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in asdict(run).values()) + "\n")


def check_app(row: Row, seen: int, requests: int) -> None:
    """The app's counter moved as the row says: every answer was forwarded (so a peer that forwards really
    did), at most the first copy of a duplicate, or nothing for a peer that answers by itself."""
    if row.app == "every" and seen < requests:
        raise BenchError(f"{row.name}: wrk got {requests} answers but only {seen} requests reached the app")
    if row.app == "first" and seen > 1 + requests // 1000:
        raise BenchError(f"{row.name}: {seen} requests reached the app for {requests} duplicate deliveries")
    if row.app == "none" and seen != 0:
        raise BenchError(f"{row.name}: {seen} requests reached the app, which this peer never contacts")
