"""nginx+njs: what a user of nginx would write to verify the signature without compiling a module.

A js_content handler computes the HMAC-SHA256 of the raw body (njs's crypto module, over r.requestBuffer,
so no text decoding) and compares it with X-Pps-Hmac-Sha256, then r.internalRedirect() hands the request to
a named location with the same proxy_pass as the nginx proxy (the njs-examples pattern for checking a body
before proxying), or answers 403. nginx reads the whole body into one memory buffer before js_content runs
(client_body_in_single_buffer, 2 MiB), and proxy_pass sends that buffer on. No dedup, no header rules, and
the comparison is a plain `!==`, not constant-time: the signature check alone."""

import os
import re
import subprocess

from . import nginx
from ..host import BenchError
from .base import Peer

VERIFY_JS = """// Written by bench/run: the HMAC-SHA256 of the raw body must equal X-Pps-Hmac-Sha256 (lowercase hex).
const crypto = require('crypto');
const SECRET = '%(secret)s';

function hmac(r) {
  const sent = r.headersIn['X-Pps-Hmac-Sha256'];
  const body = r.requestBuffer;
  if (!sent || body === undefined
      || crypto.createHmac('sha256', SECRET).update(body).digest('hex') !== sent) {
    r.return(403, 'forbidden\\n');
    return;
  }
  r.internalRedirect('@app');
}

function version(r) {
  r.return(200, njs.version);
}

export default { hmac, version };
"""


def module_path(given: str) -> str:
    """ngx_http_js_module.so: NJS_MODULE, else in nginx's --modules-path."""
    if given:
        return given
    v = subprocess.run([nginx.NGINX, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"--modules-path=(\S+)", v)
    return os.path.join(m.group(1) if m else "/usr/lib/nginx/modules", "ngx_http_js_module.so")


class Njs(Peer):
    key = "njs"
    title = "nginx+njs"
    port_offset = 6

    def start(self) -> None:
        b = self.bench
        module = module_path(b.s.njs_module)
        if not os.access(module, os.R_OK):
            raise BenchError(f"no njs module at {module}: install libnginx-mod-http-js or set NJS_MODULE")
        app = b.peers["app"].port

        def conf(d: str) -> str:
            with open(os.path.join(d, "verify.js"), "w") as f:
                f.write(VERIFY_JS % {"secret": b.secret})
            return f"""load_module {module};
{nginx.common(d)}
http {{
  {nginx.http_paths(d)}
  {nginx.access_log(b, d)}
  js_path "{d}";
  js_import verify from verify.js;
  {nginx.KEEPALIVE}
  client_body_in_single_buffer on;
  {nginx.upstream_app(app)}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      js_content verify.hmac;
    }}
    location = /njs-version {{
      js_content verify.version;
    }}
    location @app {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
        self.proc = nginx.start(b, "njs", conf, self.port)
        status, _, text = b.get(self.port, "/njs-version")
        if status != 200:
            raise BenchError("nginx+njs: no njs version")
        self.version = text.strip()

    def sanity(self) -> None:
        """A signed 1 MiB and 1 KiB delivery each reach the app once; a forged one and one without a
        signature are answered 403 and never reach it."""
        b = self.bench
        for size in ("1m", "1k"):
            seen = b.app_delta(lambda: b.expect(f"nginx+njs, signed {size}", 200,
                                                b.post(self.port, size, "sanity-njs", b.sigs[size])))
            if seen != 1:
                raise BenchError(f"sanity: nginx+njs answered 200 but {seen} requests reached the app instead of 1")

        def forged():
            b.expect("nginx+njs, forged signature", 403, b.post(self.port, "1k", "sanity-njs", b.sigs["64k"]))
            b.expect("nginx+njs, no signature", 403, b.post(self.port, "1k", "sanity-njs", None))
        seen = b.app_delta(forged)
        if seen != 0:
            raise BenchError(f"sanity: nginx+njs let {seen} forged requests through to the app")

    def describe(self) -> str:
        return f"njs {self.version}"
