"""The app: nginx answering `200 ok` to any request.

`return` makes nginx read the request body and throw it away (ngx_http_discard_request_body), so every byte
is consumed and the connection stays reusable. A second `server` on another port serves stub_status, whose
request counter tells the rows how many requests really reached the app. No access log."""

from . import nginx
from .base import Peer


class App(Peer):
    key = "app"
    title = "app"
    port_offset = 1

    @property
    def status_port(self) -> int:
        return self.bench.port(2)

    def ports(self):
        return [self.port, self.status_port]

    def start(self) -> None:
        def conf(d: str) -> str:
            return f"""{nginx.common(d)}
http {{
  {nginx.http_paths(d)}
  access_log off;
  default_type text/plain;
  {nginx.KEEPALIVE}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{self.status_port};
    location / {{ stub_status; }}
  }}
}}
"""
        self.proc = nginx.start(self.bench, "app", conf, self.port)
