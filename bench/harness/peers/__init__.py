"""The servers, one file each. A row names its peer by `key`; they start in this order (the app first:
the others forward to it)."""

from .app import App
from .nginx_proxy import NginxProxy
from .njs import Njs
from .pingora_client import PingoraClient
from .pingora_serve import PingoraServe
from .plain_pingora import PlainPingora
from .sidecar import Sidecar
from .sidecar_nodedup import SidecarNoDedup
from .sidecar_traced import SidecarTraced

ALL = [App, NginxProxy, Njs, PlainPingora, PingoraServe, PingoraClient, Sidecar, SidecarTraced, SidecarNoDedup]
BY_KEY = {p.key: p for p in ALL}
