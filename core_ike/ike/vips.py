"""Virtual IP pools (RFC 7296 2.19): addresses the responder hands out in CFG_REPLY.

An address is leased to an IKE_SA and stays taken while that SA or a rekeyed successor of it (RFC
7296 2.18: the successor keeps the peer's configuration) holds it: a count of holders per address.
"""

from __future__ import annotations

import ipaddress
import logging

from .context import Vip
from .identity import Identity

log = logging.getLogger("core_ike.ike")


class VipPool:
    def __init__(self) -> None:
        self._holders: dict[Vip, int] = {}

    def lease(self, pools: list[str], identity: Identity | None = None) -> Vip | None:
        """The first free address of the first pool that has one; None when all are taken. `identity`
        is for pools that bind addresses to identities (docs/gateway.md, "Pools"); this one does not."""
        for pool in pools:
            for host in ipaddress.ip_network(pool, strict=False).hosts():
                if host not in self._holders:
                    self._holders[host] = 1
                    return host
        return None

    def hold(self, vip: Vip) -> None:
        """Another IKE_SA (a rekeyed successor) holds `vip` too."""
        self._holders[vip] = self._holders.get(vip, 0) + 1

    def release(self, vip: Vip, label: str) -> None:
        """One holder is gone; the address goes back to the pool with the last one."""
        n = self._holders.get(vip, 0) - 1
        if n > 0:
            self._holders[vip] = n
            return
        if self._holders.pop(vip, None) is not None:
            log.info("released virtual IP %s of %s", vip, label)

    def __contains__(self, vip: object) -> bool:
        return vip in self._holders
