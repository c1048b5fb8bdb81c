"""The settings of bench/run and bench/profile, from the environment (the table in bench/README.md)."""

import os
from dataclasses import dataclass
from typing import List, Optional

from .host import BenchError

# name: (default, meaning). Whole numbers only; checked once, here.
NUMBERS = {
    "DURATION": (10, "seconds per measured run"),
    "ROUNDS": (3, "interleaved rounds: every row runs once per round"),
    "CONNECTIONS": (32, "wrk connections (all rows but the 1 MiB ones and G)"),
    "BIG_CONNECTIONS": (8, "wrk connections for the 1 MiB rows"),
    "THREADS": (1, "wrk threads"),
    "WARMUP": (2, "seconds of unmeasured load per row before the first round"),
    "FILL_MAX_SECONDS": (900, "give up the memory phase after this long"),
    "PORT_BASE": (18700, "the servers listen on 127.0.0.1, PORT_BASE+1 to +14"),
    "NOISY_LIMIT": (20, "a run where other processes used more than this % of a CPU is noisy"),
    "STEAL_LIMIT": (10, "a run where the hypervisor stole more than this % of the servers' CPU is noisy"),
    "NOISY_RETRIES": (2, "a noisy run is repeated at most this many times"),
    "QUIET_WAIT": (0, "wait up to this many seconds for an idle machine before starting"),
    "SYSCALL_SECONDS": (3, "seconds of the extra run per row that counts system calls"),
    "PROFILE_SECONDS": (10, "bench/profile: seconds of load sampled"),
}


@dataclass
class Settings:
    duration: int
    rounds: int
    connections: int
    big_connections: int
    threads: int
    warmup: int
    fill_ids: int
    fill_max_seconds: int
    port_base: int
    noisy_limit: int
    steal_limit: int
    noisy_retries: int
    quiet_wait: int
    syscall_seconds: int
    profile_seconds: int
    logs: bool
    pin: bool
    keep: bool
    hmac_rate: bool
    syscalls: str  # auto, perf, strace or off
    rows: Optional[List[str]]  # None: every row
    client_cpus: str
    server_cpus: str
    sidecar_bin: str
    plain_proxy_bin: str
    serve_bin: str
    client_bin: str
    njs_module: str
    bench_rev: str
    profiler: str  # perf or callgrind


def _number(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit():
        raise BenchError(f"{name} must be a whole number, not '{raw}'")
    return int(raw)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    if raw not in ("0", "1"):
        raise BenchError(f"{name} must be 0 or 1, not '{raw}'")
    return raw == "1"


def load() -> Settings:
    """The settings in force; a subset of rows (ROWS=...) defaults to no memory and no HMAC phase."""
    n = {name.lower(): _number(name, default) for name, (default, _) in NUMBERS.items()}
    rows_raw = os.environ.get("ROWS", "").replace(",", " ").split()
    subset = bool(rows_raw)
    s = Settings(
        **n,
        fill_ids=_number("FILL_IDS", 0 if subset else 1_000_000),
        logs=_flag("LOGS", True),
        pin=_flag("PIN", True),
        keep=_flag("KEEP", False),
        hmac_rate=_flag("HMAC_RATE", not subset),
        syscalls=os.environ.get("SYSCALLS", "auto") or "auto",
        rows=rows_raw or None,
        client_cpus=os.environ.get("CLIENT_CPUS", "0") or "0",
        server_cpus=os.environ.get("SERVER_CPUS", "1") or "1",
        sidecar_bin=os.environ.get("SIDECAR_BIN", ""),
        plain_proxy_bin=os.environ.get("PLAIN_PROXY_BIN", ""),
        serve_bin=os.environ.get("SERVE_BIN", ""),
        client_bin=os.environ.get("CLIENT_BIN", ""),
        njs_module=os.environ.get("NJS_MODULE", ""),
        bench_rev=os.environ.get("BENCH_REV", ""),
        profiler=os.environ.get("PROFILER", "perf") or "perf",
    )
    if not (s.duration >= 1 and s.rounds >= 1 and s.threads >= 1):
        raise BenchError("need DURATION>=1, ROUNDS>=1 and THREADS>=1")
    if s.connections < s.threads or s.big_connections < s.threads:
        raise BenchError("need CONNECTIONS and BIG_CONNECTIONS >= THREADS")
    if s.syscalls not in ("auto", "perf", "strace", "0"):
        raise BenchError(f"SYSCALLS must be auto, perf, strace or 0, not '{s.syscalls}'")
    if s.profiler not in ("perf", "callgrind"):
        raise BenchError(f"PROFILER must be perf or callgrind, not '{s.profiler}'")
    return s
