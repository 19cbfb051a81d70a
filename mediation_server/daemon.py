"""`python -m mediation_server -c server.toml`: the mediation server daemon.

The iked runtime plus the MediationServer engine extension, peers from med_db (RSA/EC keys under
their ID_KEY_ID, registered in the portal) and PSK pseudonyms from the config file. Extra config:

```toml
[mediation]
database = "sqlite:////var/lib/ikeme/med_db.sqlite"   # optional: portal peers + persistent callbacks
policy = "all"              # all | same-owner | allow-list | grants (the portal's mediation_grant table)
allow = [["alice@med", "bob@med"]]                    # for allow-list
callback_ttl = "10m"
connect_rate = 5            # ME_CONNECT requests per second per peer
connect_burst = 10
max_endpoints = 16          # ME_ENDPOINTs accepted per ME_CONNECT
max_pending_callbacks = 16  # callback registrations per requester
relay = true                # data relay for peers that cannot reach each other (our extension)
relay_ports = "50000-50999" # UDP ports on the server's address, two per relay
relay_per_peer = 8
relay_total = 200
relay_idle_timeout = "2m"   # ports freed after this long without traffic
relay_unused_timeout = "15s" # ... for a relay that only ever saw ME checks (direct pair won, or nothing)
relay_rate = 2000000        # bytes/s per relay (both directions together)
relay_packet_rate = 4000    # packets/s per relay
stun = true                 # STUN binding responder (RFC 5389) for the clients' NAT behaviour discovery
stun_port = 3478
stun_alt_port = 3479        # RFC 5780: the second port (0: none)
stun_alt_address = ""       # RFC 5780: the second address (none: mapping EIM and ADM look alike)
stun_rate = 500             # STUN answers per second, all clients together
cluster_engine = "redis://10.0.0.5:6379/0"  # optional: one service with the other servers on this Redis
cluster_name = "ms1"        # this server's name in the cluster (default: the host name)
```

and a mediation connection (`mediation = true`, remote id `%any`, no children).
`ikectl -s <control> status` lists the online peers.
"""

from __future__ import annotations

import asyncio
import socket
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core_ike.daemon.config import (
    CHECK_BOOL,
    CHECK_DURATION,
    CHECK_IDENTITY,
    CHECK_INT,
    CHECK_NUMBER,
    CHECK_STR,
    DaemonConfig,
    check_choice,
    check_section,
    database_url,
)
from core_ike.daemon.confvalues import duration
from core_ike.daemon.main import run_main
from core_ike.daemon.runtime import Daemon
from core_ike.errors import LocalError

from .cluster.core import Cluster
from .datarelay import DataRelay, RelayConfig
from .registry import Authorizer, Policy, Registry, RegistryConfig
from .relay import MediationServer
from .relaysock import RelaySockets
from .stun import STUN_CHECKS, StunServer, stun_settings

if TYPE_CHECKING:
    from .cluster.redis_bus import RedisBus
    from .db import DbCallbackStore, PortalPeers
    from .presence import PresenceWriter

POLICIES = ("all", "same-owner", "allow-list", "grants")


def _allow(where: str, key: str, v: Any) -> list[tuple[str, str]]:
    if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                          for p in v):
        raise LocalError(f"{where} {key}: expected a list of [requester, target] identity pairs, got {v!r}")
    for pair in v:
        for ident in pair:
            CHECK_IDENTITY(where, key, ident)
    return [(a, b) for a, b in v]


def _cluster_engine(where: str, key: str, v: Any) -> str:
    url = str(CHECK_STR(where, key, v))
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise LocalError(f"{where} {key}: {v!r} is not a Redis URL (redis://HOST:PORT/DB, rediss://…, unix://PATH)")
    return url


def _cluster_name(where: str, key: str, v: Any) -> str:
    name = str(CHECK_STR(where, key, v))
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise LocalError(f"{where} {key}: {v!r} is not a server name (letters, digits, - _ ., at most 64)")
    return name


def _port_range(where: str, key: str, v: Any) -> str:
    lo, _, hi = CHECK_STR(where, key, v).partition("-")
    if not (lo.isdigit() and (hi or lo).isdigit() and 0 < int(lo) <= int(hi or lo) < 65536):
        raise LocalError(f"{where} {key}: {v!r} is not a port range LOW-HIGH (e.g. \"50000-50999\")")
    return str(v)


# every [mediation] key and its check (docs/configuration.md documents exactly these; tests compare them)
MEDIATION_CHECKS: dict[str, Any] = {
    "database": database_url, "policy": check_choice(POLICIES), "allow": _allow,
    "callback_ttl": CHECK_DURATION, "connect_rate": CHECK_NUMBER, "connect_burst": CHECK_INT,
    "max_endpoints": CHECK_INT, "max_pending_callbacks": CHECK_INT, "relay": CHECK_BOOL,
    "relay_ports": _port_range, "relay_per_peer": CHECK_INT, "relay_total": CHECK_INT,
    "relay_idle_timeout": CHECK_DURATION, "relay_unused_timeout": CHECK_DURATION,
    "relay_rate": CHECK_NUMBER, "relay_packet_rate": CHECK_NUMBER,
    **STUN_CHECKS,
    "cluster_engine": _cluster_engine, "cluster_name": _cluster_name,
}
MEDIATION_KEYS = tuple(MEDIATION_CHECKS)


def relay_config(med: dict[str, Any]) -> RelayConfig:
    lo, _, hi = str(med.get("relay_ports", "50000-50999")).partition("-")
    try:
        ports = (int(lo), int(hi or lo))
    except ValueError:
        raise LocalError(f"relay_ports {med.get('relay_ports')!r}: expected 'low-high'") from None
    try:
        return RelayConfig(
            enabled=bool(med.get("relay", True)), ports=ports,
            per_peer=int(med.get("relay_per_peer", 8)), total=int(med.get("relay_total", 200)),
            idle_timeout=duration(med.get("relay_idle_timeout", 120)),
            unused_timeout=duration(med.get("relay_unused_timeout", 15)),
            rate_bytes=float(med.get("relay_rate", 2_000_000)),
            rate_packets=float(med.get("relay_packet_rate", 4000)))
    except ValueError as e:
        raise LocalError(str(e)) from None


def _registry(med: dict[str, Any], cfg: DaemonConfig) -> tuple[Registry, PortalPeers | None,
                                                               DbCallbackStore | None]:
    rc = RegistryConfig(
        callback_ttl=duration(med.get("callback_ttl", 600)),
        connect_rate=float(med.get("connect_rate", 5.0)),
        connect_burst=int(med.get("connect_burst", 10)),
        max_endpoints=int(med.get("max_endpoints", 16)),
        max_pending_callbacks=int(med.get("max_pending_callbacks", 16)),
    )
    policy = str(med.get("policy", "all"))
    store = None
    portal = None
    if med.get("database"):
        # med_db (SQLAlchemy: about 20 MiB resident) is loaded only by a server configured with a database
        from .db import open_portal

        portal, store = open_portal(str(med["database"]))
        cfg.creds.resolver = portal.public_key
    if policy == "all":
        auth = Authorizer(Policy.ALL)
    elif policy == "same-owner":
        if portal is None:
            raise LocalError("policy 'same-owner' needs [mediation] database")
        auth = Authorizer(Policy.SAME_OWNER, owner_of=portal.owner_of)
    elif policy == "allow-list":
        auth = Authorizer(Policy.ALLOW_LIST, allowed=[(a, b) for a, b in med.get("allow", [])])
    elif policy == "grants":
        if portal is None:
            raise LocalError("policy 'grants' needs [mediation] database")
        auth = Authorizer(Policy.ALLOW_LIST, allowed_fn=portal.granted,
                          allowed=[(a, b) for a, b in med.get("allow", [])])
    else:
        raise LocalError(f"unknown mediation policy {policy!r} (all, same-owner, allow-list, grants)")
    return Registry(rc, store=store, authorizer=auth), portal, store


class ServerDaemon(Daemon):
    def __init__(self, cfg: DaemonConfig, med: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.med = med
        self._new_med = med
        registry, self.portal, self.store = _registry(med, cfg)
        # the registry keeps wall-clock times so persisted callback expiries survive a restart
        offset = time.time() - time.monotonic()
        rc = relay_config(med)
        self.relay = DataRelay(rc) if rc.enabled else None
        self.cluster: Cluster | None = None
        self.bus: RedisBus | None = None
        if med.get("cluster_engine"):
            from .cluster.redis_bus import RedisBus  # redis-py only for a server in a cluster

            self.cluster = Cluster(str(med.get("cluster_name") or socket.gethostname()))
            self.bus = RedisBus(str(med["cluster_engine"]), self.cluster, self._cluster_message,
                                self._cluster_synced, self._cluster_server_gone, sequenced=self._cluster_sequenced)
        self.mediation = MediationServer(self.engine, registry, clock=lambda now: now + offset, relay=self.relay,
                                         cluster=self.cluster, send_now=self.transport.send)
        self.relay_sockets = RelaySockets(self.relay) if self.relay is not None else None
        if self.relay_sockets is not None:
            self.listeners.append(self.relay_sockets.on_event)
        self.control.extra["status"] = self.status
        # presence for the server manager, which reads only med_db (mediation_server/presence.py)
        self.presence: PresenceWriter | None = None
        if self.portal is not None:
            from .db import checked
            from .presence import PresenceWriter  # with the database only, as med_db above

            self.presence = PresenceWriter(self.portal.sessions, self.portal, relay=self.relay, nat_of=self._nat_of,
                                           server=str(med.get("cluster_name") or socket.gethostname()))
            checked(self.presence.start)
            self.listeners.append(self.presence.on_event)
        self.stun = StunServer(s) if (s := stun_settings(med, cfg)) is not None else None

    def _cluster_message(self, data: bytes) -> None:
        self.mediation.on_cluster_message(data, time.monotonic())
        self.transport.flush()

    def _cluster_synced(self, servers: list[str]) -> None:
        self.mediation.sync_to(servers)

    def _cluster_server_gone(self, server: str) -> None:
        self.mediation.cluster_server_gone(server, time.monotonic())
        self.transport.flush()

    def _cluster_sequenced(self, seq: int) -> None:
        self.mediation.on_sequenced(seq, time.monotonic())
        self.transport.flush()

    def _nat_of(self, identity: str) -> str | None:
        """The NAT behaviour an online peer reported (RFC 5780 terms), when the registry has it."""
        rec = self.mediation.registry.lookup(identity)
        return rec.nat if rec is not None else None

    def autostart(self, now: float) -> None:
        """The IKE sockets are bound: the STUN responder next (a port in use only disables it)."""
        if self.stun is not None:
            self.stun.start()
        super().autostart(now)

    def load_config(self) -> DaemonConfig:
        """Reload: connections, PSK pseudonyms and keys from the file (peers' keys come from med_db at
        each authentication anyway); [mediation] settings need a restart, which reload reports."""
        new = super().load_config()
        if self.portal is not None:
            new.creds.resolver = self.portal.public_key
        if new.settings.dataplane == "auto":
            new.settings.dataplane = "none"
        raw = tomllib.loads(Path(str(self.config_path)).read_text()).get("mediation", {})
        self._new_med = check_section("[mediation]", raw, MEDIATION_CHECKS)
        return new

    def _settings_needing_restart(self, new: DaemonConfig) -> list[str]:
        keys = super()._settings_needing_restart(new)
        return keys + (["[mediation]"] if self._new_med != self.med else [])

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        st.update({"registered-peers": len(self.mediation.status()),
                   "callbacks-waiting": len(self.mediation.registry.registrations()),
                   "relays": len(self.relay.status(time.monotonic())) if self.relay is not None else 0})
        return st

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        peers = [{"identity": p.identity, "endpoint": f"{p.endpoint[0]}[{p.endpoint[1]}]" if p.endpoint else "",
                  "since": round(now - p.since), "idle": round(now - p.last_activity), "ike": p.unique_id,
                  "nat": p.nat}
                 for p in self.mediation.status()]
        waiting = [{"requester": r.requester, "target": r.target, "expires_in": round(r.expires - now)}
                   for r in self.mediation.registry.registrations()]
        mono = time.monotonic()
        relays = [{"id": r.id, "a": r.a, "b": r.b, "a_port": r.a_port, "b_port": r.b_port, "address": r.address,
                   "a_latched": f"{r.a_latched[0]}[{r.a_latched[1]}]" if r.a_latched else "",
                   "b_latched": f"{r.b_latched[0]}[{r.b_latched[1]}]" if r.b_latched else "",
                   "bytes_a_to_b": r.bytes_a_to_b, "bytes_b_to_a": r.bytes_b_to_a, "packets": r.packets,
                   "idle": round(r.idle, 1), "age": round(r.age, 1), "in_use": r.in_use}
                  for r in (self.relay.status(mono) if self.relay is not None else [])]
        return {"ok": True, "peers": peers, "callbacks": waiting, "relays": relays,
                "stun": self.stun.status() if self.stun is not None else None}

    async def run(self) -> None:
        """The daemon's run, plus med_db traffic off the event loop: the peers' snapshot refresh and the
        callback registrations' writes run in worker threads (mediation_server/db.py)."""
        background = [asyncio.create_task(c) for c in (
            self.portal.refresh_loop() if self.portal is not None else None,
            self.store.flush_loop() if self.store is not None else None,
            self.presence.run() if self.presence is not None else None,
            self.bus.run() if self.bus is not None else None) if c is not None]
        try:
            await super().run()
        finally:
            for t in background:
                t.cancel()
            if self.store is not None:
                self.store.flush()  # what the last changes left unwritten
            if self.presence is not None:
                self.presence.flush()

    def close(self) -> None:
        if self.relay_sockets is not None:
            self.relay_sockets.close()
        if self.stun is not None:
            self.stun.close()


def _build(cfg: DaemonConfig, raw: dict[str, Any]) -> Daemon:
    if cfg.settings.dataplane == "auto":
        cfg.settings.dataplane = "none"  # the server carries no CHILD_SAs
    med = check_section("[mediation]", raw.get("mediation", {}), MEDIATION_CHECKS)
    return ServerDaemon(cfg, med)


def main(argv: list[str] | None = None) -> int:
    return run_main("mediation-server", "IKEv2 mediation server", argv, _build)
