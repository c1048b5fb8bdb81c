"""Pingora's HTTP server forwarding with the sidecar's own client and nothing else
(examples/pingora_client.rs): each request read whole, sent with pps_sidecar::upstream::App, the app's
answer relayed. The app and its timeouts come from the sidecar peer's configuration file, so both use the
same [upstream] settings."""

from .base import Peer
from .sidecar import write_config


class PingoraClient(Peer):
    key = "client"
    title = "Pingora ServeHttp + sidecar client"
    port_offset = 9
    example = "pingora_client"

    def start(self) -> None:
        b = self.bench
        config = write_config(b)
        self.start_binary([b.built.examples[self.example], f"127.0.0.1:{self.port}", config], "client.log")
