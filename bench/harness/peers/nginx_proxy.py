"""The reference proxy: nginx proxy_pass to the app over keep-alive connections, the whole body buffered in
memory before it goes upstream (proxy_request_buffering on, a 2 MiB buffer), like the sidecar."""

from . import nginx
from .base import Peer


class NginxProxy(Peer):
    key = "proxy"
    title = "nginx proxy"
    port_offset = 3

    def start(self) -> None:
        app = self.bench.peers["app"].port

        def conf(d: str) -> str:
            return f"""{nginx.common(d)}
http {{
  {nginx.http_paths(d)}
  {nginx.access_log(self.bench, d)}
  {nginx.KEEPALIVE}
  {nginx.upstream_app(app)}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
    }}
  }}
}}
"""
        self.proc = nginx.start(self.bench, "proxy", conf, self.port)
