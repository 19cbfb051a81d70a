"""iked with the gateway's configuration sources: `[daemon] config_db` (strongSwan's SQL schema) and
`[daemon] ipsec_conf` / `ipsec_secrets` (classic files). The TOML file's own connections and secrets
stay; the sources' connections come after them (docs/gateway.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import replace
from typing import Any

from cryptography import x509
from sqlalchemy.exc import SQLAlchemyError

from core_ike.daemon.config import DaemonConfig, load
from core_ike.daemon.lifecycle import diff_configs
from core_ike.daemon.runtime import Daemon
from core_ike.errors import LocalError

from .sqlconf.loader import Snapshot
from .sqlconf.pools import DbVipPool
from .sqlconf.source import SqlConfigSource, merge_creds, open_config_db

log = logging.getLogger("gateway")


def dn_text(name: x509.Name) -> str:
    """A DN the way strongSwan prints it: RDNs in encoding order, `, ` between them."""
    return ", ".join(a.rfc4514_string() for rdn in name.rdns for a in rdn)


def _with_files(cfg: DaemonConfig) -> DaemonConfig:
    """Add the connections and secrets of `[daemon] ipsec_conf` / `ipsec_secrets`."""
    conf = getattr(cfg.settings, "ipsec_conf", None)
    if not conf:
        return cfg
    from .ipsecconf import load_files

    conns, creds = load_files(conf, getattr(cfg.settings, "ipsec_secrets", None))
    clash = {c.name for c in conns} & {c.name for c in cfg.connections}
    if clash:
        raise LocalError(f"[daemon] ipsec_conf: conn {sorted(clash)[0]!r} is also a [connections] table")
    return replace(cfg, connections=[*cfg.connections, *conns], creds=merge_creds(cfg.creds, creds))


def _with_snapshot(cfg: DaemonConfig, snap: Snapshot) -> DaemonConfig:
    own = {c.name for c in cfg.connections}
    conns = [c for c in snap.connections if c.name not in own]
    for c in snap.connections:
        if c.name in own:
            log.warning("sql config: peer config '%s' ignored: a connection of this name is in the file", c.name)
    return replace(cfg, connections=[*cfg.connections, *conns], creds=merge_creds(cfg.creds, snap.creds))


class GatewayDaemon(Daemon):
    def __init__(self, cfg: DaemonConfig, source: SqlConfigSource | None = None) -> None:
        self.base = cfg  # the files' part, without the database's rows
        self.source = source
        if source is not None:
            cfg = _with_snapshot(cfg, source.read())
        super().__init__(cfg)
        self._refresher: asyncio.Task[None] | None = None
        self._pool_task: asyncio.Task[None] | None = None
        self.control.extra["ipsec-status"] = self._ipsec_status
        # virtual IPs: subnets in memory in order, the database's pools bound to identities (docs/gateway.md)
        self.pools = DbVipPool(source.db if source is not None else None, time.time)
        self.engine.vips = self.pools
        self.db_pools: DbVipPool | None = None
        if source is not None:
            self.engine.config_miss = source.miss
            source.on_snapshot = self.apply_snapshot
            self.db_pools = self.pools
            try:
                self.db_pools.read()
            except SQLAlchemyError as e:
                log.warning("no virtual IP pools from the database: %s", str(e).splitlines()[0])

    def apply_snapshot(self, snap: Snapshot) -> None:
        """A fresh read of the database (event loop): new and changed rows are used from the next
        connection attempt on; SAs of a deleted or changed row stay up until they end."""
        full = _with_snapshot(self.base, snap)
        diff, merged = diff_configs(self.engine.configs, full.connections)
        self.engine.configs[:] = merged
        self.engine.creds = full.creds
        self.cfg = replace(self.cfg, connections=merged, creds=full.creds)
        if diff.added or diff.removed or diff.changed:
            log.info("configuration database: %s", diff.summary())
        if self.traps is not None:
            self.traps.sync(merged)
        if self.initiates and diff.added:
            now = time.monotonic()
            by_name = {c.name: c for c in merged}
            for n in diff.added:
                self.start_connection(by_name[n], now)
            self.transport.flush()

    async def _ipsec_status(self, req: dict[str, Any]) -> dict[str, Any]:
        """What `ipsec statusall` shows beyond `list` and `conns`: the pools with their size and the
        addresses in use, the listening addresses, each connection's certificates and pools."""
        from core_ike.io.transport import local_addresses

        pools: dict[str, dict[str, int]] = {}
        for c in self.engine.configs:
            for p in c.pools:
                dbp = self.db_pools.pools.get(p.lstrip("%")) if self.db_pools is not None else None
                if dbp is not None:
                    online = self.db_pools.online(dbp.name) if self.db_pools is not None else 0
                    bound = sum(1 for a in dbp.addrs if a.identity is not None)
                    pools[dbp.name] = {"size": len(dbp.addrs), "online": online, "offline": bound - online}
                    continue
                try:
                    net = ipaddress.ip_network(p, strict=False)
                except ValueError:
                    continue  # a database pool not loaded (yet)
                size = net.num_addresses - 2 if net.num_addresses > 2 else net.num_addresses
                online = sum(1 for sa in self.engine.ike_sas() if sa.peer_vip is not None and sa.peer_vip in net)
                pools[p] = {"size": size, "online": online, "offline": 0}
        conns = {c.name: {"certs": [dn_text(cert.subject) for cert in c.local.certs], "pools": c.pools}
                 for c in self.engine.configs}
        # the routed connections come from `status`, as in every daemon (core_ike/daemon/traps.py)
        return {"ok": True, "pools": pools, "conns": conns,
                "listening": self.cfg.settings.listen or local_addresses(),
                "sources": {"config_db": bool(self.source), "ipsec_conf": getattr(self.cfg.settings, "ipsec_conf", None)}}

    def load_config(self) -> DaemonConfig:
        if self.config_path is None:
            raise LocalError("no configuration file to reload")
        base = _with_files(load(self.config_path))
        self.base = base
        if self.source is None:
            return base
        return _with_snapshot(base, self.source.read())

    async def _pool_loop(self, pools: DbVipPool, interval: float = 1.0) -> None:
        """Write the leases behind and load pools added meanwhile (worker thread, every second)."""
        while True:
            await asyncio.sleep(interval)  # pacing of the writes, not a synchronisation
            try:
                await asyncio.to_thread(pools.flush)
                await asyncio.to_thread(pools.read)
            except SQLAlchemyError as e:
                log.warning("virtual IP pools: the database is not reachable, %d lease change(s) wait: %s",
                            pools.pending(), str(e).splitlines()[0])

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.source is not None:
            self._refresher = loop.create_task(self.source.refresh_loop())
        if self.db_pools is not None:
            self._pool_task = loop.create_task(self._pool_loop(self.db_pools))
        try:
            await super().run()
        finally:
            for t in (self._refresher, self._pool_task):
                if t is not None:
                    t.cancel()
            if self.db_pools is not None:
                try:
                    self.db_pools.flush()  # the releases of the shutdown's DELETEs
                except SQLAlchemyError as e:
                    log.warning("virtual IP pools: %d lease change(s) not written: %s", self.db_pools.pending(), e)


def build_gateway(cfg: DaemonConfig) -> GatewayDaemon:
    """iked's daemon for `cfg` with its gateway sources (gateway/launch.py decides)."""
    cfg = _with_files(cfg)
    url = getattr(cfg.settings, "config_db", None)
    source = SqlConfigSource(open_config_db(url)) if url else None
    try:
        return GatewayDaemon(cfg, source)
    except Exception as e:  # SQLAlchemy's errors and a driver's: one line at start-up
        if isinstance(e, LocalError):
            raise
        raise LocalError(f"[daemon] config_db: cannot read the configuration: {str(e).splitlines()[0]}") from None
