"""pps-sidecar as the `sidecar` peer runs it, plus `[tracing]`: every delivery's server and client spans
exported over OTLP/HTTP (JSON) to a sink on loopback (`otlp_sink.py`, pinned with wrk: the collector is
another machine's work, as wrk is). Row C-traced against row C is the cost of tracing per delivery; the
sink's CPU is not the sidecar's. The spans the sidecar exported and dropped go into the report: drops
would make tracing look cheaper than it is."""

import os
import subprocess
import sys

from ..host import BenchError
from .sidecar import SidecarProcess

SINK_OFFSET = 12


class SidecarTraced(SidecarProcess):
    key = "traced"
    title = "pps-sidecar, tracing on"
    port_offset = 10
    admin_offset = 11

    def __init__(self, bench):
        super().__init__(bench)
        self.sink = None

    @property
    def sink_port(self) -> int:
        return self.bench.port(SINK_OFFSET)

    def ports(self):
        return [self.port, self.admin_port, self.sink_port]

    def helper_pids(self):
        """The sink: a server's process for the noise figures, not the sidecar's CPU."""
        return [self.sink.pid] if self.sink else []

    def start(self) -> None:
        b = self.bench
        tracing = f'\n[tracing]\notlp_endpoint = "http://127.0.0.1:{self.sink_port}"\nsample_ratio = 1.0\n'
        config = self.derived_config("traced", lambda text: text + tracing)
        out = open(os.path.join(b.tmp, "traced", "sink.log"), "ab")
        sink = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "otlp_sink.py")
        self.sink = subprocess.Popen([sys.executable, sink, str(self.sink_port)], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=b.on_client())
        out.close()
        b.procs.append(self.sink)
        b.wait_port(self.sink_port, self.sink, "OTLP sink")
        self.launch(config, "traced")

    def spans(self):
        """(exported, dropped) spans so far, from the sidecar's /metrics."""
        _, _, text = self.bench.get(self.admin_port, "/metrics")
        exported = dropped = 0
        for line in text.splitlines():
            if line.startswith("pps_sidecar_trace_spans_exported_total "):
                exported = int(line.split()[1])
            elif line.startswith("pps_sidecar_trace_spans_dropped_total{"):
                dropped += int(line.split()[1])
        return exported, dropped

    def sanity(self) -> None:
        """A delivery is answered 200, reaches the app, and its two spans reach the sink."""
        import time
        before = self.spans()[0]
        super().sanity()
        for _ in range(100):
            if self.spans()[0] >= before + 2:
                return
            time.sleep(0.1)
        raise BenchError(f"sanity: {self.title}: the delivery's spans were not exported within 10 s")

    def note(self) -> str:
        exported, dropped = self.spans()
        return f"tracing row: {exported} spans exported, {dropped} dropped (pps_sidecar_trace_spans_*)"
