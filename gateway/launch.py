"""iked's daemon factory: the gateway's (gateway/daemon.py, with SQLAlchemy) only when a gateway source is
configured, so a plain iked starts without importing it."""

from __future__ import annotations

from typing import Any

from core_ike.daemon.config import DaemonConfig
from core_ike.daemon.runtime import Daemon


def uses_gateway(cfg: DaemonConfig) -> bool:
    st = cfg.settings
    return bool(getattr(st, "config_db", None) or getattr(st, "ipsec_conf", None))


def build(cfg: DaemonConfig, raw: dict[str, Any] | None = None) -> Daemon:
    if not uses_gateway(cfg):
        return Daemon(cfg)
    from .daemon import build_gateway

    return build_gateway(cfg)
