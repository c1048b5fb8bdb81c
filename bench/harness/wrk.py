"""The load: wrk with bench/sign.lua, one run at a time, every answer checked. At one connection the
client is examples/one_connection.rs instead: it times each request on the monotonic clock with blocking
I/O, where wrk's own tail at one connection is larger than the rows' differences (bench/README.md).

Webhook ids are PREFIX-TTTT-4000-8000-CCCCCCCCCCCC (sign.lua): the prefix is 4 hex digits of this run's
sequence number and 4 random ones, so an id is never sent twice in one benchmark unless the row means it
(`dup`, `static`, `fill`); the sidecar starts empty every time."""

import os
import random
import resource
import subprocess
from typing import Dict

from .host import CLK_TCK, BenchError

ONE_CONNECTION = "one_connection"  # the cargo example that loads the rows at one connection


class Wrk:
    def __init__(self, bench):
        self.bench = bench
        self.seq = 0
        self.salt = random.randrange(1 << 16)

    def prefix(self) -> str:
        self.seq += 1
        if self.seq >= 1 << 16:
            raise BenchError("more than 65535 wrk runs: webhook id prefixes would repeat")
        return f"{self.seq:04x}{self.salt:04x}"

    def run(self, name: str, port: int, size: str, mode: str, conns: int, secs: int, quota: int = 0,
            out_dir: str = "") -> Dict[str, int]:
        """One wrk run against 127.0.0.1:port/webhooks: the BENCH_RESULT figures, plus `wrk_ticks` (wrk's
        own CPU time). No answer other than 2xx, and at most 0.1% socket errors, or it stops here."""
        b = self.bench
        out = os.path.join(out_dir or b.tmp, f"wrk-{self.seq + 1:03d}-{name}.txt")
        env = dict(os.environ, BENCH_BODY_FILE=b.bodies[size], BENCH_SIG=b.sigs[size], BENCH_MODE=mode,
                   BENCH_PREFIX=self.prefix(), BENCH_THREADS=str(b.s.threads), BENCH_QUOTA=str(quota))
        argv = ["wrk", f"-t{b.s.threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", "--latency",
                "-s", os.path.join(b.bench_dir, "sign.lua"), f"http://127.0.0.1:{port}/webhooks"]
        one = b.built.examples.get(ONE_CONNECTION) if conns == 1 and mode == "unique" else None
        if one:
            argv = [one, str(port), str(secs), b.bodies[size], b.sigs[size], env["BENCH_PREFIX"]]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "w") as f:
            try:
                rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=secs + 30,
                                    preexec_fn=b.on_client()).returncode
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk did not finish for {name} (see {out})") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc != 0:
            raise BenchError(f"wrk failed for {name} (see {out})")
        r = parse(out, name)
        r["wrk_ticks"] = round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * CLK_TCK)
        if r["requests"] <= 0:
            raise BenchError(f"{name}: wrk completed no request (see {out})")
        if r["non2xx"] > 0:
            raise BenchError(f"{name}: {r['non2xx']} of {r['requests']} answers were not 2xx/3xx (a 403 from "
                             f"the sidecar means a bad signature; see {out} and {b.tmp})")
        r["sockerr"] = r["connect"] + r["read"] + r["write"] + r["timeout"]
        if r["sockerr"] * 1000 > r["requests"]:
            raise BenchError(f"{name}: {r['sockerr']} socket errors for {r['requests']} requests (see {out})")
        return r


def parse(path: str, name: str) -> Dict[str, int]:
    """The `BENCH_RESULT key=value ...` line sign.lua's done() prints."""
    with open(path) as f:
        for line in f:
            if line.startswith("BENCH_RESULT "):
                return {k: int(float(v)) for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
    raise BenchError(f"no BENCH_RESULT from wrk for {name} (see {path})")
