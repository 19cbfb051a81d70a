"""Several mediation servers for one client (docs/architecture.md, "Cluster"): `[client] servers` lists
host names or addresses; a name with several addresses gives each in turn. The client registers at the
first; when its mediation connection is lost it registers at the next (the servers of a cluster share
the peers' presence and callback registrations, so it may register at any of them). Without the key,
the mediation connection's own `remote_addrs` are the list.

Names are resolved again at each turn (a service's DNS may change its addresses), off the event loop
(asyncio's getaddrinfo runs in a worker thread).

A server killed without a word (kill -9, a lost machine) is noticed only by the liveness check (RFC 7296
§2.4): after `dpd_delay` without a packet from it, an INFORMATIONAL request that fails when its
retransmissions run out. With several servers the client must move within 30 s (docs/architecture.md,
"Cluster"), so a mediation connection of such a client gets `FAILOVER_DPD_DELAY` and `FAILOVER_RETRANSMIT`
unless its TOML sets `dpd_delay` / `retransmit` itself (`failover_liveness`): at most 10 s idle plus
12.2 s of retransmissions (1.5, 2.25, 3.4, 5.1 s) before it registers at the next server, instead of
20 s plus 165 s. The price is one small exchange per idle 10 s per client at its server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from typing import Any

from core_ike.daemon.config import DaemonConfig
from core_ike.errors import LocalError
from core_ike.ike.config import IkeConfig, RetransmitConfig

log = logging.getLogger("mediation_client")

FAILOVER_DPD_DELAY = 10.0
FAILOVER_RETRANSMIT = RetransmitConfig(timeout=1.5, base=1.5, tries=3)


def failover_liveness(cfg: DaemonConfig, client: dict[str, Any]) -> None:
    """The mediation connections of a client with several servers (`[client] servers`, or more than
    one address in `remote_addrs`) get the failover liveness defaults above, each where the connection's
    TOML table does not set the key."""
    conns = cfg.raw.get("connections")
    conns = conns if isinstance(conns, dict) else {}
    for c in cfg.connections:
        if not c.mediation or not (client.get("servers") or len([a for a in c.remote_addrs if a != "%any"]) > 1):
            continue
        table = conns.get(c.name)
        table = table if isinstance(table, dict) else {}
        if "dpd_delay" not in table:
            c.dpd_delay = FAILOVER_DPD_DELAY
        if "retransmit" not in table:
            c.retransmit = dataclasses.replace(FAILOVER_RETRANSMIT)


def check_servers(where: str, key: str, v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise LocalError(f"{where} {key}: expected a host name or address, or a list of them, got {v!r}")
    for name in v:
        if any(c.isspace() for c in name) or len(name) > 253:
            raise LocalError(f"{where} {key}: {name!r} is not a host name or address")
    return list(v)


class ServerList:
    def __init__(self, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        self._turn: dict[str, int] = {}  # mediation connection -> index of the next address to try
        self._tasks: set[asyncio.Task[None]] = set()

    async def addresses(self, cfg: IkeConfig) -> list[str]:
        """Every address of every server, in order, duplicates dropped."""
        out: list[str] = []
        names = self.names or [a for a in cfg.remote_addrs if a != "%any"]
        loop = asyncio.get_running_loop()
        for name in names:
            try:
                ipaddress.ip_address(name)
                found = [name]
            except ValueError:
                try:
                    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
                except OSError as e:
                    log.warning("mediation server %s: cannot resolve it (%s)", name, e)
                    continue
                found = [str(info[4][0]) for info in infos]
            out += [a for a in found if a not in out]
        return out

    async def next(self, cfg: IkeConfig) -> str | None:
        addrs = await self.addresses(cfg)
        if not addrs:
            return None
        i = self._turn.get(cfg.name, 0) % len(addrs)
        self._turn[cfg.name] = i + 1
        return addrs[i]

    def initiate(self, daemon: Any, name: str) -> None:
        """Bring up mediation connection `name` at the next server of the list (unless it came up
        meanwhile or the daemon stops)."""
        cfg = next((c for c in daemon.engine.configs if c.name == name), None)
        if cfg is None:
            return

        async def go() -> None:
            addr = await self.next(cfg)
            if addr is None:
                log.warning("mediation connection '%s': no server address to try", name)
                return
            if daemon.mediation.mediation_sa(name) is None and not daemon.stopping:
                log.info("initiating mediation connection '%s' to %s", name, addr)
                daemon.engine.initiate(name, None, time.monotonic(), remote=(addr, cfg.remote_port))
                daemon.transport.flush()

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
