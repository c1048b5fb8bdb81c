"""pps-sidecar as the `sidecar` peer runs it, with `[dedup] enabled = false`: the same verification,
headers, access log and metrics, and no dedup store. Row C against row C-nodedup is what the memory store
(moka) costs per delivery; C-nodedup against B-client is the rest of the sidecar's own work."""

import os

from ..host import BenchError
from .base import Peer
from .sidecar import write_config


class SidecarNoDedup(Peer):
    key = "nodedup"
    title = "pps-sidecar, dedup off"
    port_offset = 13
    admin_offset = 14

    @property
    def admin_port(self) -> int:
        return self.bench.port(self.admin_offset)

    def ports(self):
        return [self.port, self.admin_port]

    def start(self) -> None:
        b = self.bench
        with open(write_config(b)) as f:
            base = f.read()
        text = (base.replace(f":{b.port(4)}\"", f":{self.port}\"").replace(f":{b.port(5)}\"", f":{self.admin_port}\"")
                .replace("[dedup]\nenabled = true", "[dedup]\nenabled = false"))
        if "enabled = false" not in text:
            raise BenchError("sidecar_nodedup: the sidecar's configuration has no `[dedup] enabled = true` to turn off")
        d = os.path.join(b.tmp, "nodedup")
        os.makedirs(d, exist_ok=True)
        config = os.path.join(d, "sidecar.toml")
        with open(config, "w") as f:
            f.write(text)
        env = {"RUST_LOG": "info" if b.s.logs else "warn"}
        self.start_binary([b.built.sidecar, "run", "--config", config], "nodedup/sidecar.log", env)
        b.wait_port(self.admin_port, self.proc, f"{self.title} (admin)", 120 if self.wrapper else 10)
