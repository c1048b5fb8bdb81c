"""What the three nginx peers (the app, the nginx proxy, nginx+njs) share: the binary, the common lines of
their configuration, and how one starts."""

import os
import shutil
import subprocess
from typing import List

from ..host import BenchError

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# Keep-alive unlimited on both sides, bodies up to 2 MiB held in memory (the sidecar buffers them too).
KEEPALIVE = """keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_max_body_size 2m;
  client_body_buffer_size 2m;"""

# The upstream every nginx proxy uses: keep-alive connections to the app.
def upstream_app(app_port: int) -> str:
    return f"""upstream app {{
    server 127.0.0.1:{app_port};
    keepalive 32;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}"""


def common(d: str) -> str:
    """The lines outside `http` every instance shares: one worker, files in its own directory."""
    return f"""user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}"""


def http_paths(d: str) -> str:
    """Temporary paths inside the prefix, for the modules this nginx has."""
    v = subprocess.run([NGINX, "-V"], capture_output=True, text=True).stderr
    out = [f"client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;"]
    for m in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{m}_module" not in v:
            out.append(f"{m}_temp_path {d}/{m};")
    return " ".join(out)


def access_log(bench, d: str) -> str:
    return f"access_log {d}/access.log;" if bench.s.logs else "access_log off;"


def start(bench, name: str, conf: str, port: int) -> subprocess.Popen:
    """Writes `conf` to its own directory (under the peer's name), checks it with nginx -t, starts it."""
    d = os.path.join(bench.tmp, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf(d) if callable(conf) else conf)
    t = subprocess.run([NGINX, "-t", "-q", "-p", d, "-c", path, "-e", f"{d}/error.log"],
                       capture_output=True, text=True)
    if t.returncode != 0:
        raise BenchError(f"{name}: nginx -t refused its configuration: {t.stderr.strip()}")
    p = bench.start([NGINX, "-p", d, "-c", path, "-e", f"{d}/error.log", "-g", "daemon off;"],
                    os.path.join(name, "stdout.log"))
    bench.wait_port(port, p, name)
    return p


def version() -> str:
    v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return v.replace("nginx version: ", "")


def packages() -> List[str]:
    """nginx-light if the distribution has it, else nginx."""
    from ..host import has_package
    return ["nginx-light"] if has_package("nginx-light") else ["nginx"]
