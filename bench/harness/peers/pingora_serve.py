"""Pingora's HTTP server alone (examples/pingora_serve.rs): a ServeHttp app that reads the body and answers
200 without contacting the app. Set against nginx's `return 200` (row A's app CPU), the Pingora server's
own cost."""

from .base import Peer


class PingoraServe(Peer):
    key = "serve"
    title = "Pingora ServeHttp, no app"
    port_offset = 8
    forwards = False
    example = "pingora_serve"

    def start(self) -> None:
        b = self.bench
        self.start_binary([b.built.examples[self.example], f"127.0.0.1:{self.port}"], "serve.log")
