"""The plain Pingora proxy (examples/plain_proxy.rs): a ProxyHttp whose upstream_peer returns the app, one
thread, Pingora's own connection pool, mimalloc, no access log, the body streamed as it arrives. The least
any Pingora proxy costs per request."""

from .base import Peer


class PlainPingora(Peer):
    key = "plain"
    title = "plain Pingora proxy"
    port_offset = 7
    example = "plain_proxy"

    def start(self) -> None:
        b = self.bench
        app = b.peers["app"].port
        self.start_binary([b.built.examples[self.example], f"127.0.0.1:{self.port}", f"127.0.0.1:{app}"],
                          "plain.log")
