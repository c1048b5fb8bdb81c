"""What a peer is: a server on 127.0.0.1 that rows send load to."""

import subprocess
from typing import List, Optional

from ..host import BenchError


class Peer:
    key = ""  # the name rows.py uses
    title = ""  # in logs, errors and the report
    port_offset = 0  # it listens on PORT_BASE + this
    forwards = True  # every request it answers reaches the app once (the sanity check and the rows check it)
    example: Optional[str] = None  # the cargo example it runs (examples/NAME.rs), if any

    def __init__(self, bench):
        self.bench = bench
        self.proc: Optional[subprocess.Popen] = None
        # A command the server runs under (bench/profile: valgrind); the Rust peers honour it.
        self.wrapper: List[str] = []

    def start_binary(self, argv: List[str], log_name: str, env=None) -> None:
        """Starts a server of ours (under `wrapper`, if any) and waits for its port."""
        b = self.bench
        self.proc = b.start(self.wrapper + argv, log_name, env)
        b.wait_port(self.port, self.proc, self.title, 120 if self.wrapper else 10)

    @property
    def port(self) -> int:
        return self.bench.port(self.port_offset)

    def ports(self) -> List[int]:
        """Every port it takes (checked free before anything starts)."""
        return [self.port]

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> List[int]:
        """The processes whose CPU is this peer's (nginx's master; host.cpu_ticks adds its workers)."""
        return [self.proc.pid] if self.proc else []

    def helper_pids(self) -> List[int]:
        """Processes it runs beside its server (the tracing row's OTLP sink): not its CPU, not noise."""
        return []

    def note(self) -> str:
        """A line for the end of the report, if this peer has something to add after the rounds."""
        return ""

    def sanity(self) -> None:
        """A signed 1 MiB delivery is answered 200, and reaches the app once if this peer forwards."""
        b = self.bench
        sid = f"sanity-{self.key}"
        seen = b.app_delta(lambda: b.expect(f"{self.title}, 1 MiB", 200, b.post(self.port, "1m", sid, b.sigs["1m"])))
        want = 1 if self.forwards else 0
        if seen != want:
            raise BenchError(f"sanity: {self.title}: {seen} requests reached the app instead of {want}")

    def describe(self) -> str:
        """One line for the report's header, if this peer has something to say (a version)."""
        return ""
