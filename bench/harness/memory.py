"""Memory per remembered id: a fresh sidecar's RSS idle (1 s after it listens, no request yet), then after
FILL_IDS distinct webhook ids were acknowledged. The ids are counted by the app (every distinct id reaches
it exactly once; duplicates never do) and cross-checked with pps_sidecar_dedup_entries. wrk runs in `fill`
mode in slices of at most 20 s, each with the quota still missing, so the count lands on FILL_IDS exactly."""

import time
from dataclasses import dataclass

from .host import BenchError, log, rss_kb


@dataclass
class Filled:
    ids: int
    rss_idle_kb: int
    rss_kb: int
    hwm_kb: int
    seconds: int
    gauge: str

    @property
    def bytes_per_id(self) -> float:
        return (self.rss_kb - self.rss_idle_kb) * 1024 / self.ids


def fill(bench) -> Filled:
    s = bench.s
    sidecar = bench.peers["sidecar"]
    log(f"memory: restarting the sidecar, RSS idle, then filling the dedup cache with {s.fill_ids} ids")
    sidecar.restart()
    time.sleep(1)
    idle = rss_kb(sidecar.proc.pid)
    base = bench.app_requests()
    reads, ids, est = 1, 0, 5000
    t0 = time.monotonic()
    runs = 0
    while ids < s.fill_ids:
        runs += 1
        if runs > 200:
            raise BenchError(f"fill: 200 wrk runs and still only {ids} ids")
        if time.monotonic() - t0 >= s.fill_max_seconds:
            raise BenchError(f"fill: {s.fill_max_seconds} s and still only {ids} ids")
        remaining = s.fill_ids - ids
        secs = min(20, max(2, remaining * 11 // 10 // est + 1))
        bench.wrk.run("fill", sidecar.port, "1k", "fill", s.connections, secs, quota=remaining)
        time.sleep(0.3)
        now = bench.app_requests()
        reads += 1
        new = now - base - (reads - 1) - ids
        ids += new
        est = max(500, new // secs)
        log(f"fill: {ids} ids remembered (+{new} in {secs} s), RSS {rss_kb(sidecar.proc.pid)} kB")
    time.sleep(2)
    pid = sidecar.proc.pid
    return Filled(ids, idle, rss_kb(pid), rss_kb(pid, "VmHWM"), round(time.monotonic() - t0),
                  sidecar.dedup_entries())
