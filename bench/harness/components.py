"""Which component a profiled symbol belongs to: Pingora, tokio, allocation, copying, HMAC, dedup,
headers, logging, our client, the rest of our code, the kernel, std.

A symbol is attributed by the crate that owns it: `<pingora_core::X as tokio::io::AsyncRead>::poll_read`
is Pingora's (its Self type), `core::ptr::drop_in_place<moka::...>` is moka's (what is dropped). With the
release build's LTO, small functions are inlined into their callers, so a share is that of the functions
that remain, with what they inlined: the groups are a map, not an exact split."""

import re
from typing import List, Tuple

# (component, patterns matched at the start of the owning path), first match wins. Order matters: the
# sidecar's own modules before "our code (other)", pingora_http (header maps) before Pingora.
RULES: List[Tuple[str, List[str]]] = [
    ("HMAC", [r"sha2::", r"hmac::", r"digest::", r"block_buffer::", r"subtle::", r"hex::",
              r"pps_sidecar::auth::hmac"]),
    ("dedup", [r"moka::", r"crossbeam_epoch::", r"crossbeam_channel::", r"crossbeam_utils::", r"tagptr::",
               r"quanta::", r"triomphe::", r"pps_sidecar::dedup"]),
    # timefmt: on a delivery's path, X-Pps-Triggered-At parsed and rewritten.
    ("headers", [r"httparse::", r"http::", r"pingora_http::", r"pps_sidecar::headers", r"pps_sidecar::paths",
                 r"pps_sidecar::timefmt"]),
    ("logging", [r"log::", r"env_logger::", r"humantime::", r"pps_sidecar::logging", r"pps_sidecar::proxy::access_log",
                 r"core::fmt::", r"alloc::fmt::", r"std::io::stdio"]),
    ("our client", [r"pps_sidecar::upstream"]),
    ("Pingora", [r"pingora(_(core|proxy|http|pool|timeout|error|runtime|cache|lru|header_serde))?::"]),
    ("tokio", [r"tokio::", r"mio::", r"parking_lot", r"futures_\w+::", r"async_trait::", r"slab::"]),
    ("our code (other)", [r"pps_sidecar::", r"pps_sidecar\b", r"pingora_client::", r"pingora_serve::",
                         r"plain_proxy::", r"uuid::", r"rand\w*::"]),
    ("allocation", [r"alloc::alloc::", r"alloc::raw_vec::", r"__rust_(alloc|dealloc|realloc|alloc_zeroed)",
                    r"__rdl_", r"_*mi_", r"mimalloc", r"(__libc_)?(malloc|free|calloc|realloc|cfree)$",
                    r"_int_(malloc|free|realloc)"]),
    ("copying", [r"_*mem(cpy|move|set)"]),
]
_COMPILED = [(c, [re.compile(p) for p in ps]) for c, ps in RULES]
_WRAPPERS = re.compile(r"^(core::ptr::drop_in_place|alloc::sync::Arc<.*>::drop_slow)<(.*)>$")
_GENERIC_SELF = re.compile(r"^<[A-Z][A-Za-z0-9]* as (.*)>::")


def owner(symbol: str) -> str:
    """The path whose crate owns `symbol` (see the module header): `<T as Trait>::f`, with a generic `T`,
    belongs to the trait's crate."""
    s = symbol.strip()
    for _ in range(4):
        m = _WRAPPERS.match(s)
        if not m:
            break
        s = m.group(2)
    m = _GENERIC_SELF.match(s)
    if m:
        s = m.group(1)
    return re.sub(r"^[<&*\s]+(mut\s+|dyn\s+)?", "", s)


def component(symbol: str, dso: str = "", kernel: bool = False) -> str:
    if kernel or dso.startswith("[kernel") or dso.startswith("vmlinux") or symbol.startswith("0xffff"):
        return "kernel"
    path = owner(symbol)
    for name, patterns in _COMPILED:
        if any(p.match(path) for p in patterns):
            return name
    if not path or path.startswith("[unknown]") or path.startswith("0x"):
        return "unknown"
    # std, core, alloc, bytes, libc's own functions (clock_gettime, memcmp...): what is left.
    return "std and libc"
