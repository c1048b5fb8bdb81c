"""pps-sidecar as the `sidecar` peer runs it, with `[dedup] enabled = false`: the same verification,
headers, access log and metrics, and no dedup store. Row C against row C-nodedup is what the memory store
(moka) costs per delivery; C-nodedup against B-client is the rest of the sidecar's own work."""

from ..host import BenchError
from .sidecar import SidecarProcess


def _dedup_off(text: str) -> str:
    if "[dedup]\nenabled = true" not in text:
        raise BenchError("sidecar_nodedup: the sidecar's configuration has no `[dedup] enabled = true` to turn off")
    return text.replace("[dedup]\nenabled = true", "[dedup]\nenabled = false")


class SidecarNoDedup(SidecarProcess):
    key = "nodedup"
    title = "pps-sidecar, dedup off"
    port_offset = 13
    admin_offset = 14

    def start(self) -> None:
        self.launch(self.derived_config("nodedup", _dedup_off), "nodedup")
