"""cargo builds: the sidecar (working tree, BENCH_REV or SIDECAR_BIN), the example peers, bench/hmac-rate."""

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Dict, List

from .host import BenchError, log


@dataclass
class Built:
    sidecar: str
    commit: str  # what the report names: the commit, and whether the tree or a given binary was used
    examples: Dict[str, str]  # example name -> binary
    hmac_rate: str
    pingora_version: str


def binaries(s, root: str, example_names: List[str], with_hmac_rate: bool) -> Built:
    """The sidecar, the examples named, and bench/hmac-rate if asked."""
    target = target_dir(root)
    binary, commit = sidecar(root, target, s.sidecar_bin, s.bench_rev)
    given = {"plain_proxy": s.plain_proxy_bin, "pingora_serve": s.serve_bin, "pingora_client": s.client_bin}
    built = examples(root, target, {name: given.get(name, "") for name in example_names})
    rate = hmac_rate(root, target) if with_hmac_rate else ""
    return Built(binary, commit, built, rate, pingora_version(root))


def target_dir(root: str) -> str:
    """cargo's target directory for this workspace (CARGO_TARGET_DIR when set)."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--manifest-path",
                          os.path.join(root, "Cargo.toml")], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["target_directory"]


def _git(root: str, *args: str) -> str:
    r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def _cargo(what: str, *args: str, cwd: str) -> None:
    log(f"building {what}: cargo build --release --locked {' '.join(args)}".rstrip())
    if subprocess.run(["cargo", "build", "--release", "--locked", *args], cwd=cwd).returncode != 0:
        raise BenchError(f"cargo build of {what} failed in {cwd}")


def sidecar(root: str, target: str, given: str, rev: str):
    """(binary, commit description)"""
    head = _git(root, "rev-parse", "--short", "HEAD") or "unknown"
    if given:
        if not os.access(given, os.X_OK):
            raise BenchError(f"SIDECAR_BIN={given} is not an executable")
        path = os.path.realpath(given)
        return path, f"{head} (binary given: {path})"
    if rev:
        sha = _git(root, "rev-parse", "--verify", f"{rev}^{{commit}}")
        if not sha:
            raise BenchError(f"BENCH_REV={rev} is not a revision")
        src = os.path.join(target, "bench-src", sha)
        if not os.path.exists(os.path.join(src, "Cargo.toml")):
            os.makedirs(src, exist_ok=True)
            archive = subprocess.Popen(["git", "-C", root, "archive", "--format=tar", sha], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, check=True)
            archive.wait()
        _cargo(f"pps-sidecar at {rev} ({sha})", "--manifest-path", os.path.join(src, "Cargo.toml"),
               "--target-dir", os.path.join(target, "bench-rev"), cwd=root)
        return os.path.join(target, "bench-rev", "release", "pps-sidecar"), f"{sha[:7]} (BENCH_REV={rev})"
    _cargo("pps-sidecar (waits if another build holds the lock)", cwd=root)
    commit = head
    if _git(root, "status", "--porcelain", "--", "src", "examples", "Cargo.toml", "Cargo.lock"):
        commit += " + uncommitted changes in src/, examples/ or Cargo.*"
    return os.path.join(target, "release", "pps-sidecar"), commit


def examples(root: str, target: str, wanted: Dict[str, str]) -> Dict[str, str]:
    """Builds the examples named in `wanted` (example -> binary given by the user, or ""), in one cargo
    call, from the working tree: the floors are measured next to whichever sidecar is. An example is built
    with the dev-dependencies' features, so its first build compiles the dependencies a second time."""
    out = {}
    todo: List[str] = []
    for name, given in wanted.items():
        if given:
            if not os.access(given, os.X_OK):
                raise BenchError(f"{given} (given for the example {name}) is not an executable")
            out[name] = os.path.realpath(given)
        else:
            todo.append(name)
            out[name] = os.path.join(target, "release", "examples", name)
    if todo:
        args = [a for name in todo for a in ("--example", name)]
        _cargo("the example peers", *args, cwd=root)
    return out


def hmac_rate(root: str, target: str) -> str:
    d = os.path.join(target, "bench-hmac")
    _cargo("bench/hmac-rate", "--manifest-path", os.path.join(root, "bench", "hmac-rate", "Cargo.toml"),
           "--target-dir", d, cwd=root)
    return os.path.join(d, "release", "hmac-rate")


def pingora_version(root: str) -> str:
    with open(os.path.join(root, "Cargo.lock")) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line == 'name = "pingora"' and i + 1 < len(lines):
            return lines[i + 1].split('"')[1]
    return "unknown"
