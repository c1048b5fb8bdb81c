"""The machine: progress lines, /proc readers (CPU per process and per core, memory), apt-get."""

import os
import shutil
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Tuple

CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1


class BenchError(Exception):
    """A check failed or a step could not run: the benchmark stops and keeps its directory."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- CPU per process -------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> Optional[List[str]]:
    """The fields of /proc/PID/stat after "pid (comm)": [0] is the state, [1] the parent, [11] utime."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def children(pid: int) -> List[int]:
    """The processes whose parent is `pid` (nginx's workers)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None and f[1] == str(pid):
                out.append(int(name))
    return out


def with_children(pids: Iterable[int]) -> List[int]:
    out = []
    for p in pids:
        out.append(p)
        out.extend(children(p))
    return out


def cpu_ticks(pids: Iterable[int]) -> Tuple[int, int]:
    """(user, system) clock ticks used so far by these processes, all their threads, and their children
    (nginx's workers): /proc/PID/stat utime and stime."""
    user = system = 0
    for p in with_children(pids):
        f = _stat_fields(p)
        if f is not None:
            user += int(f[11])
            system += int(f[12])
    return user, system


def per_request(ticks: int, requests: int) -> float:
    """Clock ticks over `requests`, in microseconds per request."""
    return ticks / CLK_TCK * 1e6 / requests if requests else 0.0


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for process {pid}")


# ---- CPU per core ----------------------------------------------------------------------------------------

def expand_cpus(spec: str) -> List[int]:
    """"0-2,4" -> [0, 1, 2, 4]"""
    out: List[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def core_jiffies(cores: Optional[List[int]]) -> Tuple[int, int, int]:
    """(busy, total, steal) jiffies of these cores (None: the whole machine) from /proc/stat."""
    busy = total = steal = 0
    with open("/proc/stat") as f:
        for line in f:
            v = line.split()
            if not v[0].startswith("cpu"):
                continue
            whole = v[0] == "cpu"
            if (cores is None and whole) or (cores is not None and not whole and int(v[0][3:]) in cores):
                n = [int(x) for x in v[1:9]]
                busy += n[0] + n[1] + n[2] + n[5] + n[6]
                total += sum(n[0:8])
                steal += n[7]
    return busy, total, steal


def busy_pct(a: Tuple[int, int, int], b: Tuple[int, int, int]) -> float:
    t = b[1] - a[1]
    return 100.0 * (b[0] - a[0]) / t if t > 0 else 0.0


def steal_pct(a: Tuple[int, int, int], b: Tuple[int, int, int]) -> float:
    t = b[1] - a[1]
    return 100.0 * (b[2] - a[2]) / t if t > 0 else 0.0


def machine_busy(seconds: float = 2.0) -> float:
    """% of all CPUs busy over `seconds`."""
    a = core_jiffies(None)
    time.sleep(seconds)
    return busy_pct(a, core_jiffies(None))


def wait_quiet(limit_s: int) -> float:
    """Waits up to `limit_s` for the machine to be at most 5% busy; returns the last figure."""
    t0 = time.monotonic()
    while True:
        busy = machine_busy()
        if busy <= 5:
            return busy
        if time.monotonic() - t0 >= limit_s:
            log(f"WARNING: the machine is {busy:.0f}% busy before the benchmark (other processes): "
                "figures will be noisy")
            return busy
        log(f"machine {busy:.0f}% busy; waiting for it to be quiet (QUIET_WAIT={limit_s})")
        time.sleep(8)


# ---- packages --------------------------------------------------------------------------------------------

def apt_install(packages: List[str]) -> None:
    """Installs Debian packages; nginx's package must not start the distribution's service (port 80)."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing {' '.join(packages)} and not root: install them, or run as root")
    if shutil.which("apt-get") is None:
        raise BenchError(f"missing {' '.join(packages)} and no apt-get")
    log(f"installing: {' '.join(packages)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    # No policy-rc.d means "start services"; a temporary one that answers 101 prevents it.
    policy = "/usr/sbin/policy-rc.d"
    made = not os.path.exists(policy)
    if made:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                           env=env, stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError(f"apt-get install {' '.join(packages)} failed")
    finally:
        if made:
            os.unlink(policy)


def has_package(name: str) -> bool:
    return subprocess.run(["apt-cache", "show", name], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def missing(commands: Dict[str, str]) -> List[str]:
    """The packages of the commands (command: package) that are not on PATH or in /usr/sbin."""
    return [pkg for cmd, pkg in commands.items()
            if shutil.which(cmd) is None and not os.access(f"/usr/sbin/{cmd}", os.X_OK)]
