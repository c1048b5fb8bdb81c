#!/usr/bin/env python3
"""A legacy order service that receives Pitchpoint webhooks behind pps-sidecar.

It has no webhook plumbing at all: no signature check, no duplicate detection, no date parsing. It trusts
the headers the sidecar sets (X-Pps-Verified, canonical X-Pps-*), which is safe only because it listens
on 127.0.0.1 and the sidecar is the only way in.

Standard library only. Environment: APP_LISTEN (default 127.0.0.1:3000).
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "legacy-orders/1.0"

    def do_POST(self):
        if not self.path.startswith("/webhooks"):
            return self.answer(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        verified = self.headers.get("X-Pps-Verified")
        if verified not in ("hmac", "jwt"):
            # Only reachable in shadow mode: the sidecar forwards but says the check failed.
            log(f"UNVERIFIED delivery ignored ({verified})")
            return self.answer(200, {"ignored": True})
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            # A final 4xx: Pitchpoint will not resend a body we can never parse.
            return self.answer(422, {"error": "body is not JSON"})
        topic = self.headers.get("X-Pps-Topic")
        webhook_id = self.headers.get("X-Pps-Webhook-Id")
        with LOCK:
            ORDERS[webhook_id] = event
            count = len(ORDERS)
        log(
            f"processed {topic} id={webhook_id} tenant={self.headers.get('X-Pps-Tenant-Id')} "
            f"at={self.headers.get('X-Pps-Triggered-At')} verified={verified} "
            f"request={self.headers.get('X-Request-Id')} (orders seen: {count})"
        )
        self.answer(200, {"ok": True})

    def do_GET(self):
        if self.path == "/orders":
            with LOCK:
                return self.answer(200, {"orders": len(ORDERS)})
        self.answer(404, {"error": "not found"})

    def answer(self, status, payload):
        data = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


def log(msg):
    print(f"[legacy-app] {msg}", flush=True)


def main():
    host, port = os.environ.get("APP_LISTEN", "127.0.0.1:3000").rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    log(f"listening on {host}:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
