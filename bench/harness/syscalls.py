"""System calls per request: one extra run per row (SYSCALL_SECONDS, after the rounds, not timed), the
row's server processes counted while wrk loads them.

perf (the default when it works) counts the syscall tracepoints in the kernel: the server runs at nearly
full speed, so it batches work as it does in the measured runs. It gives the calls of each kind, the
failed calls and those that failed with EAGAIN, and the context switches. strace -c -f (SYSCALLS=strace,
or when perf cannot count tracepoints) stops the server at every call: the counts of each kind and their
errors are exact, but a slower server finds more ready per epoll_wait, so that count is not faithful."""

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .host import BenchError, apt_install, log, with_children
from .rows import Row, connections

# The calls a network server makes; the rest are counted in the total only.
TRACKED = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "sendmmsg",
           "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "accept", "accept4", "close", "shutdown",
           "futex", "sched_yield", "io_uring_enter", "getsockopt", "setsockopt", "ioctl", "fcntl", "mmap",
           "munmap", "madvise", "mprotect", "brk", "clock_gettime", "nanosleep", "clock_nanosleep", "openat",
           "statx", "newfstatat", "getrandom", "rt_sigprocmask", "lseek", "pwrite64", "pread64"]
TRACEFS = ["/sys/kernel/tracing/events/syscalls", "/sys/kernel/debug/tracing/events/syscalls"]
EAGAIN = 11


@dataclass
class Counted:
    row: str
    tool: str
    requests: int
    total: int
    errors: int
    eagain: Optional[int]  # perf only
    switches: Optional[int]  # perf only
    calls: Dict[str, int] = field(default_factory=dict)
    failed: Dict[str, int] = field(default_factory=dict)  # strace only


def _perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and "raw_syscalls:sys_enter" in r.stderr and "<not" not in r.stderr


def choose(setting: str) -> Optional[str]:
    """The tool to count with: perf, strace, or None (SYSCALLS=0)."""
    if setting == "0":
        return None
    if setting in ("auto", "perf") and _perf_works():
        return "perf"
    if setting == "perf":
        raise BenchError("SYSCALLS=perf, but `perf stat -e raw_syscalls:sys_enter` does not work here "
                         "(install linux-perf; perf_event_paranoid must allow tracepoints)")
    if shutil.which("strace") is None:
        apt_install(["strace"])
    return "strace"


def _tracked_events() -> List[str]:
    for d in TRACEFS:
        if os.path.isdir(d):
            return [n for n in TRACKED if os.path.isdir(os.path.join(d, f"sys_enter_{n}"))]
    return []


class Counter:
    def __init__(self, bench, tool: str):
        self.bench = bench
        self.tool = tool
        self.events = _tracked_events() if tool == "perf" else []
        self.results: List[Counted] = []

    def count(self, row: Row) -> Counted:
        b = self.bench
        peer = b.peers[row.peer]
        pids = with_children(peer.pids())
        out = os.path.join(b.tmp, f"syscalls-{row.name}.txt")
        tracer = subprocess.Popen(self._argv(pids, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attach before the load starts: neither tracer says when it is ready
        if tracer.poll() is not None:
            raise BenchError(f"{self.tool} could not attach to {peer.title} (see {out})")
        try:
            r = b.wrk.run(f"syscalls-{row.name}", peer.port, row.body, row.mode, connections(row, b.s),
                          b.s.syscall_seconds)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        parse = self._parse_perf if self.tool == "perf" else self._parse_strace
        counted = parse(row.name, r["requests"], out)
        self.results.append(counted)
        log(f"  {row.name:<10} {counted.total / counted.requests:6.2f} system calls per request ({self.tool})")
        return counted

    def _argv(self, pids: List[int], out: str) -> List[str]:
        if self.tool == "strace":
            return ["strace", "-c", "-f", "-qq", "-o", out] + [a for p in pids for a in ("-p", str(p))]
        argv = ["perf", "stat", "-x,", "-o", out, "-e", "raw_syscalls:sys_enter",
                "-e", "raw_syscalls:sys_exit", "--filter", "ret < 0",
                "-e", "raw_syscalls:sys_exit", "--filter", f"ret == -{EAGAIN}", "-e", "context-switches"]
        for name in self.events:
            argv += ["-e", f"syscalls:sys_enter_{name}"]
        return argv + ["-p", ",".join(str(p) for p in pids)]

    def _parse_perf(self, row: str, requests: int, path: str) -> Counted:
        values = []
        with open(path) as f:
            for line in f:
                v = line.strip().split(",")
                if len(v) >= 3 and v[2]:
                    values.append((v[2], int(v[0]) if v[0].isdigit() else 0))
        if len(values) < 4:
            raise BenchError(f"perf stat gave no counts for {row} (see {path})")
        c = Counted(row, "perf", requests, values[0][1], values[1][1], values[2][1], values[3][1])
        for event, n in values[4:]:
            c.calls[event.split("sys_enter_", 1)[1]] = n
        return c

    def _parse_strace(self, row: str, requests: int, path: str) -> Counted:
        c = Counted(row, "strace", requests, 0, 0, None, None)
        with open(path) as f:
            for line in f:
                # % time, seconds, usecs/call, calls, [errors,] syscall
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+\s+)?(\w+)\s*$", line)
                if not m:
                    continue
                calls, errors, name = int(m.group(1)), int(m.group(2) or 0), m.group(3)
                if name == "total":
                    c.total, c.errors = calls, errors
                else:
                    c.calls[name] = calls
                    if errors:
                        c.failed[name] = errors
        if c.total == 0:
            raise BenchError(f"strace counted no system call for {row} (see {path})")
        return c
