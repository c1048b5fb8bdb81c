"""HMAC-SHA256 over 1 MiB: the sidecar's crates (bench/hmac-rate, 3 s) next to `openssl speed` (3 s),
each pinned to the servers' CPU with nothing else running."""

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Optional

from .host import BenchError, log


@dataclass
class Rates:
    ours: float  # MB/s (10^6 bytes)
    openssl_sha256: float
    openssl_hmac: Optional[float]


def _openssl(bench, *args: str) -> str:
    r = subprocess.run(["openssl", "speed", "-bytes", "1048576", "-seconds", "3", *args], capture_output=True,
                       text=True, preexec_fn=_pin(bench))
    return r.stdout + r.stderr


def _pin(bench):
    cpus = bench.server_cpus
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def _rate(text: str, name: str) -> Optional[float]:
    """openssl speed's last table: `sha256  1234567.89k` (1000s of bytes per second)."""
    for line in text.splitlines():
        v = line.split()
        if len(v) >= 2 and v[0] == name and re.match(r"^[\d.]+k$", v[-1]):
            return float(v[-1][:-1]) / 1000
    return None


def measure(bench, binary: str) -> Rates:
    log("HMAC-SHA256 rate over 1 MiB bodies (hmac-rate, 3 s) and openssl speed sha256 (3 s)")
    out = subprocess.run([binary, "3", "1048576"], capture_output=True, text=True, preexec_fn=_pin(bench)).stdout
    m = re.search(r"^HMAC_MBPS=([\d.]+)", out, re.M)
    sha = _rate(_openssl(bench, "-evp", "sha256"), "sha256")
    if not m or sha is None:
        raise BenchError("could not read the HMAC or openssl rates")
    return Rates(float(m.group(1)), sha, _rate(_openssl(bench, "-hmac", "sha256"), "hmac(sha256)"))
