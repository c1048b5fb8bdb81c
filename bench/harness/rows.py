"""The rows: what each measured run sends, to which peer, and what the app must see.

To change a row, change its line; to add one, add a line (and, for a new server, a file in peers/). Every
round runs the rows in this order. `ROWS=B-serve,C bench/run` runs some of them only (names, or shell
patterns: `ROWS='E-*'` is every E row).

  body    1k, 64k or 1m (bytes exactly 1024, 65536, 1048576: context.SIZES)
  mode    sign.lua's: unique (a new webhook id per request), dup (one id, cached after the first),
          static (the same bytes, sent by wrk's fast path: for peers that do not look at the id)
  conns   wrk connections: "normal" (CONNECTIONS), "big" (BIG_CONNECTIONS) or a number
  app     what the app's request counter must show afterwards: "every" request reached it, only the
          "first" copy (duplicates), or "none" (the peer answers by itself)
"""

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import List, Optional, Union

from .host import BenchError


@dataclass(frozen=True)
class Row:
    name: str
    peer: str
    body: str
    mode: str
    conns: Union[str, int]
    what: str
    app: str = "every"

    @property
    def has_proxy(self) -> bool:
        """Whether a server other than the app answers (the report's proxy columns)."""
        return self.peer != "app"


ROWS: List[Row] = [
    Row("A", "app", "1k", "static", "normal", "1 KiB, app directly"),
    Row("B", "proxy", "1k", "static", "normal", "1 KiB, nginx proxy pass"),
    Row("B-njs", "njs", "1k", "static", "normal", "1 KiB, nginx+njs HMAC check"),
    Row("B-pingora", "plain", "1k", "static", "normal", "1 KiB, plain Pingora proxy"),
    Row("B-serve", "serve", "1k", "static", "normal", "1 KiB, Pingora server, no app", app="none"),
    Row("B-client", "client", "1k", "static", "normal", "1 KiB, Pingora server + our client"),
    Row("C", "sidecar", "1k", "unique", "normal", "1 KiB, sidecar, unique ids"),
    Row("C-nodedup", "nodedup", "1k", "unique", "normal", "1 KiB, sidecar, dedup off"),
    Row("C-traced", "traced", "1k", "unique", "normal", "1 KiB, sidecar, tracing on (OTLP to loopback)"),
    Row("D", "sidecar", "1k", "dup", "normal", "1 KiB, sidecar, duplicates (cached)", app="first"),
    Row("E-app", "app", "64k", "static", "normal", "64 KiB, app directly"),
    Row("E-nginx", "proxy", "64k", "static", "normal", "64 KiB, nginx proxy pass"),
    Row("E-njs", "njs", "64k", "static", "normal", "64 KiB, nginx+njs HMAC check"),
    Row("E-pingora", "plain", "64k", "static", "normal", "64 KiB, plain Pingora proxy"),
    Row("E-sidecar", "sidecar", "64k", "unique", "normal", "64 KiB, sidecar, unique ids"),
    Row("F-app", "app", "1m", "static", "big", "1 MiB, app directly"),
    Row("F-nginx", "proxy", "1m", "static", "big", "1 MiB, nginx proxy pass"),
    Row("F-sidecar", "sidecar", "1m", "unique", "big", "1 MiB, sidecar, unique ids"),
    Row("G-nginx", "proxy", "1k", "unique", 1, "1 KiB, nginx, 1 connection"),
    Row("G-sidecar", "sidecar", "1k", "unique", 1, "1 KiB, sidecar, 1 connection"),
]


def select(names: Optional[List[str]]) -> List[Row]:
    """The rows named (exactly, or by a shell pattern such as `E-*`), in the table's order; None: all."""
    if not names:
        return list(ROWS)
    unknown = [n for n in names if not any(fnmatchcase(r.name, n) for r in ROWS)]
    if unknown:
        raise BenchError(f"ROWS: no row matches {', '.join(unknown)} (rows: {' '.join(r.name for r in ROWS)})")
    return [r for r in ROWS if any(fnmatchcase(r.name, n) for n in names)]


def connections(row: Row, settings) -> int:
    if row.conns == "normal":
        return settings.connections
    if row.conns == "big":
        return settings.big_connections
    return int(row.conns)
