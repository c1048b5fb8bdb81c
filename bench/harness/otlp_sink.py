"""An OTLP/HTTP collector's floor for the tracing row: takes `POST /v1/traces` (HTTP/1.1, keep-alive),
reads the whole body and answers `200 {}` without decoding it, so that what the row measures is the
sidecar's side of export. Run as `python3 otlp_sink.py PORT`; it prints the exports it took on SIGTERM.
(The tests decode what they receive: tests/it/common/collector.rs.)"""

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPORTS = [0, 0]  # posts, bytes


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            got = self.rfile.read(min(n, 1 << 20))
            if not got:
                return
            n -= len(got)
            EXPORTS[1] += len(got)
        EXPORTS[0] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    server.daemon_threads = True

    def stop(*_):
        print(f"otlp sink: {EXPORTS[0]} exports, {EXPORTS[1]} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
