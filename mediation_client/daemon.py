"""`python -m mediation_client -c client.toml`: the mediation client daemon.

The iked runtime plus the MediationClient engine extension. Connections come from the TOML file
(swanctl-like: one `mediation = true` connection, mediated ones with `mediated_by`/`mediation_peer`)
and/or from the client manager's database (`[client] database = URL`): the own key pair, the mediation
server and every active connection, as strongSwan's medcli plugin does; status (DOWN / CONNECTING / UP,
last error) is written back there for the portal to show.

```toml
[client]
database = "sqlite:////var/lib/ikeme/client.sqlite"   # optional
server_timeout = 30      # mediation server must answer within this
connect_timeout = 0      # answer to our ME_CONNECT: 0 = as long as the mediation SA retransmits it
callback_timeout = 120   # wait this long for an offline peer to come online
check_timeout = 30       # the peer's answer, then the connectivity checks, each give up after this
ike_timeout = 0          # mediated IKE_SA: 0 = as long as its retransmissions go on
finish_wait = 0.05       # after the first successful pair, wait this long for a better one
reconnect = 5            # seconds before re-establishing a lost mediation connection (doubles up to 60)
relay = true             # announce our relay extension: accept RELAYED endpoints from our server
upgrade_period = 30      # a relayed tunnel probes for a direct pair this often and moves to it (0: never)
nat_discovery = true     # RFC 5780 NAT behaviour discovery against the server's STUN port (natdisc.py)
stun_port = 3478         # the mediation server's STUN port
port_mapping = true      # map the IKE NAT-T port on the gateway (PCP, NAT-PMP, UPnP IGD; portmap.py)
port_probing = true      # many-port probing between a random symmetric NAT and a port-restricted one
port_mapping_lifetime = "2h"
servers = ["med.example.net"] # mediation servers in turn (names: every address; failover.py)
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

from core_ike.daemon.config import (
    CHECK_BOOL,
    CHECK_DURATION,
    CHECK_INT,
    CHECK_NUMBER,
    DaemonConfig,
    check_section,
    database_url,
)
from core_ike.daemon.confvalues import duration
from core_ike.daemon.main import run_main
from core_ike.daemon.runtime import Daemon
from core_ike.ike import events as ev
from core_ike.ike.config import IkeConfig
from core_ike.io.portpool import SocketPool
from core_ike.me import events as mev
from core_ike.me.birthday import ProbeConfig
from core_ike.me.checklist import CheckListConfig
from core_ike.me.client import MediationClient
from core_ike.me.clienttypes import MediationClientConfig
from core_ike.me.endpoints import Endpoint, is_ip, mapped_endpoint
from core_ike.me.natinfo import NatReport
from core_ike.me.predict import Allocation
from core_ike.me.tasks import me_state
from core_ike.me.upgrade import UpgradeConfig

from .failover import ServerList, check_servers, failover_liveness
from .hostaddr import REFRESH, HostAddresses
from .natdisc import NatBehaviour, discover_udp, source_address_for
from .portmap import PortMapConfig, PortMapper, default_gateway
from .status import DbStatus, load_db_connections

log = logging.getLogger("mediation_client")


# every [client] key and its check (docs/configuration.md documents exactly these; tests compare them)
CLIENT_CHECKS: dict[str, Any] = {
    "database": database_url, "server_timeout": CHECK_DURATION, "connect_timeout": CHECK_DURATION,
    "callback_timeout": CHECK_DURATION, "check_timeout": CHECK_DURATION, "ike_timeout": CHECK_DURATION,
    "finish_wait": CHECK_NUMBER,
    "reconnect": CHECK_DURATION, "relay": CHECK_BOOL, "upgrade_period": CHECK_DURATION,
    "nat_discovery": CHECK_BOOL, "stun_port": CHECK_INT,
    "port_mapping": CHECK_BOOL, "port_mapping_lifetime": CHECK_DURATION, "port_probing": CHECK_BOOL,
    "servers": check_servers,
}
CLIENT_KEYS = tuple(CLIENT_CHECKS)


def client_config(c: dict[str, Any]) -> MediationClientConfig:
    checks = CheckListConfig(
        transaction_timeout=duration(c.get("check_timeout", 30)),
        finish_wait=float(c.get("finish_wait", 0.05)),
    )
    return MediationClientConfig(
        checks=checks,
        server_timeout=duration(c.get("server_timeout", 30)),
        connect_timeout=duration(c.get("connect_timeout", 0)),
        callback_timeout=duration(c.get("callback_timeout", 120)),
        ike_timeout=duration(c.get("ike_timeout", 0)),
        relay=bool(c.get("relay", True)),
        upgrade=UpgradeConfig(period=duration(c.get("upgrade_period", 30))),
        probing=ProbeConfig(enabled=bool(c.get("port_probing", True))),
    )


STABLE_AFTER = 10.0  # at most one immediate re-establishment of a mediation connection this often


class ClientDaemon(Daemon):
    def __init__(self, cfg: DaemonConfig, client: dict[str, Any]) -> None:
        self.client = client
        self._new_client: dict[str, Any] = client
        self.db: DbStatus | None = None
        if client.get("database"):
            self.db = load_db_connections(str(client["database"]), cfg)
        failover_liveness(cfg, client)
        super().__init__(cfg)
        # [ME] §3.3.1: HOST endpoints only on addresses our sockets are bound to, never on our TUN device;
        # the snapshot is read at start and every REFRESH s, never while an ME_CONNECT is being built
        self.hosts = HostAddresses(lambda: [a for a, _ in self.transport.sockets], (cfg.settings.tun,))
        self.portmap: PortMapper | None = None
        self._portmap_task: asyncio.Task[None] | None = None
        self.mediation = MediationClient(self.engine, dataclasses.replace(
            client_config(client), host_addresses=self.hosts, extra_endpoints=self._mapped_endpoints,
            port_allocation=self._port_allocation, nat_behaviour=self._nat_summary,
            port_pool=SocketPool(self.transport), nat_pending=self._nat_pending, send_now=self.transport.send))
        self.reconnect_base = duration(client.get("reconnect", 5))
        self.servers = ServerList(client.get("servers"))
        self._backoff: dict[str, float] = {}
        self._immediate: dict[str, float] = {}  # mediation connection -> last immediate re-establishment
        self.listeners.append(self.on_mediation_event)
        self._child_failed: dict[str, str] = {}  # connection -> why its last CHILD_SA failed
        self.control.extra["up"] = self.up
        self.control.extra["status"] = self.status
        self.nat: NatBehaviour | None = None  # RFC 5780 discovery, after each mediation SA comes up
        self._nat_text: tuple[NatBehaviour, str] | None = None  # the last result and its summary
        self._nat_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ startup and reconnects
    def autostart(self, now: float) -> None:
        self._start_port_mapping()
        self.hosts.refresh()
        log.info("host endpoints offered: %s", ", ".join(self.hosts()) or "none (the server-reflexive one only)")
        asyncio.get_running_loop().call_later(REFRESH, self._refresh_hosts)
        if self.db is not None:
            self.db.reset()
        self.route_traps()  # plain connections with start_action = "trap" (core_ike/daemon/traps.py)
        for c in sorted(self.cfg.connections, key=lambda c: 0 if c.mediation else 1):
            self.start_connection(c, now)

    def _refresh_hosts(self) -> None:
        if not self.stopping:
            loop = asyncio.get_running_loop()
            self.hosts.refresh_soon(loop)
            loop.call_later(REFRESH, self._refresh_hosts)

    def start_connection(self, cfg: IkeConfig, now: float, force: bool = False) -> None:
        """The mediation connection always; mediated ones through the mediation client."""
        if cfg.mediation:
            self.servers.initiate(self, cfg.name)
        elif cfg.mediated_by:
            if force or any(ch.start_action == "start" for ch in cfg.children):
                self.mediation.connect(cfg.name, now)
        else:
            super().start_connection(cfg, now, force)

    def stop_connection(self, name: str, now: float) -> bool:
        self.mediation.cancel(name, now)
        return super().stop_connection(name, now)

    # ------------------------------------------------------------------ reload
    def load_config(self) -> DaemonConfig:
        """The TOML file again, plus the client database's connections and keys (the portal's saves)."""
        new = super().load_config()
        raw = tomllib.loads(Path(str(self.config_path)).read_text()).get("client", {})
        self._new_client = check_section("[client]", raw, CLIENT_CHECKS)
        failover_liveness(new, self._new_client)
        if self.client.get("database"):
            fresh = load_db_connections(str(self.client["database"]), new)
            if self.db is not None:
                self.db.ids.clear()
                self.db.ids.update(fresh.ids)
            fresh.close()
        return new

    def _settings_needing_restart(self, new: DaemonConfig) -> list[str]:
        keys = super()._settings_needing_restart(new)
        return keys + (["[client]"] if self._new_client != self.client else [])

    def _mediation_lost(self, name: str, established: bool) -> None:
        """Re-establish the mediation connection: at once when an established SA went (the server
        deleted it or answered INVALID_IKE_SPI after a restart), at most once per STABLE_AFTER;
        else (failed attempts, a server that keeps closing us) with a growing delay."""
        now = time.monotonic()
        if established and now - self._immediate.get(name, -STABLE_AFTER) >= STABLE_AFTER:
            self._immediate[name] = now
            delay = 0.0
        else:
            delay = self._backoff.get(name, self.reconnect_base)
            self._backoff[name] = min(delay * 2, 60.0)
        log.info("mediation connection '%s' lost, re-establishing %s", name,
                 "now" if delay == 0 else f"in {delay:.0f} s")
        loop = asyncio.get_running_loop()

        def retry() -> None:
            if self.mediation.mediation_sa(name) is None and not self.stopping and \
                    any(c.name == name for c in self.engine.configs):
                self.servers.initiate(self, name)  # the next server of the list

        loop.call_later(delay, retry)

    def on_mediation_event(self, e: object) -> None:
        # every engine event comes here (about ten per mediated setup): one match, no isinstance calls nor a
        # union type made per event
        match e:
            case mev.MediationSaUp():
                self._backoff.pop(e.name, None)
                log.info("mediation connection '%s' up, public endpoint %s", e.name,
                         f"{e.srflx[0]}[{e.srflx[1]}]" if e.srflx else "unknown")
                self._discover_nat(e)
            case ev.IkeSaFailed() | ev.IkeSaDeleted():
                if any(c.name == e.name and c.mediation for c in self.cfg.connections) and self.transport.sockets \
                        and not self.stopping:
                    self._mediation_lost(e.name, type(e) is ev.IkeSaDeleted)
            case ev.ChildSaFailed():
                self._child_failed[e.ike_name] = f"CHILD_SA '{e.name}' failed: {e.reason}"
            case ev.ChildSaEstablished():
                self._child_failed.pop(e.ike_name, None)
        if self.db is not None:
            self.db.on_event(e)

    def _discover_nat(self, e: mev.MediationSaUp) -> None:
        """RFC 5780 discovery toward the mediation server's STUN port, from the address the mediation SA
        uses; one run at a time, the result replaces the last one."""
        if not self.client.get("nat_discovery", True) or (self._nat_task and not self._nat_task.done()):
            return
        server = (e.remote[0], int(self.client.get("stun_port", 3478)))

        async def run() -> None:
            try:
                self.nat = await discover_udp(e.local[0], server)
            except OSError as err:
                self.nat = NatBehaviour(error=f"STUN from {e.local[0]}: {err.strerror or err}")
            log.info("NAT behaviour (RFC 5780, STUN %s[%d]): %s", server[0], server[1], self.nat.summary())
            self._report_nat(e.name, self.nat)
            self.mediation.nat_known(time.monotonic())  # ME_CONNECTs that waited for it
            self.transport.flush()
            if self.db is not None:
                await asyncio.to_thread(self.db.set_nat, None if self.nat.error else self.nat.summary())

        self._nat_task = asyncio.get_running_loop().create_task(run())

    def _report_nat(self, name: str, nat: NatBehaviour) -> None:
        """Tell our own mediation server (it announced IMPL_VENDOR_ID; a strongSwan one never sees this)."""
        sa = self.mediation.mediation_sa(name)
        st = me_state(sa) if sa is not None else None
        if sa is None or st is None or not st.server_ours or nat.error:
            return
        sa.queue_task(NatReport(nat.summary()), time.monotonic())
        self.transport.flush()

    def _start_port_mapping(self) -> None:
        """Map our NAT-T port on the gateway toward the mediation server (the LAN address the kernel
        picks for it); the mapping is renewed in the background and offered as a candidate."""
        if not self.client.get("port_mapping", True):
            return
        server = next((a for c in self.cfg.connections if c.mediation for a in c.remote_addrs
                       if a != "%any" and "/" not in a), None)
        if server is None:
            return
        if not is_ip(server):  # a host name: the address toward the gateway (no DNS on the event loop)
            server = default_gateway() or ""
        try:
            local = source_address_for(server)
        except (OSError, ValueError) as e:
            log.info("port mapping: no route toward %s (%s)", server, e)
            return
        cfg = PortMapConfig(lifetime=int(duration(self.client.get("port_mapping_lifetime", 7200))))
        self.portmap = PortMapper((local, self.cfg.settings.natt_port), cfg)
        self._portmap_task = asyncio.get_running_loop().create_task(self.portmap.run())

    def _mapped_endpoints(self, local: tuple[str, int]) -> list[Endpoint]:
        m = self.portmap.mapping if self.portmap is not None else None
        if m is None or m.internal[1] != local[1]:
            return []
        return [mapped_endpoint(m.external[0], m.external[1], base=m.internal)]

    def _nat_pending(self) -> bool:
        """No NAT discovery result yet, and one will come (core_ike/me/birthday.py needs it)."""
        return bool(self.client.get("nat_discovery", True)) and self.nat is None

    def _nat_summary(self) -> str | None:
        """Our NAT's behaviour for the peers (core_ike/me/birthday.py), once discovery has measured it;
        its text made once per result (each ME_CONNECT we send or answer carries it)."""
        nat = self.nat
        if nat is None or nat.error:
            return None
        if self._nat_text is None or self._nat_text[0] is not nat:
            self._nat_text = (nat, nat.summary())
        return self._nat_text[1]

    def _port_allocation(self) -> Allocation | None:
        """An APDM NAT with sequential ports (discovery): its next ports become predicted candidates."""
        n = self.nat
        if n is None or n.mapping != "APDM" or n.allocation != "sequential" or not n.port_step \
                or n.last_port is None:
            return None
        return Allocation(n.last_port, n.port_step)

    async def shutdown(self) -> None:
        """Delete the gateway's port mapping after the SAs (RFC 6886 §3.4, RFC 6887 §15)."""
        await super().shutdown()
        if self._portmap_task is not None:
            self._portmap_task.cancel()
        if self.portmap is not None:
            try:
                await asyncio.wait_for(self.portmap.close(), 5.0)
            except TimeoutError:
                log.warning("port mapping not deleted: the gateway did not answer within 5 s")

    def close(self) -> None:
        if self._nat_task is not None:
            self._nat_task.cancel()
        self.hosts.close()
        if self.db is not None:
            self.db.reset()  # every connection is DOWN when the daemon is not running

    # ------------------------------------------------------------------ control commands
    async def up(self, req: dict[str, Any]) -> dict[str, Any]:
        """`up` of a mediated connection: mediation, checks, then the IKE_SA and its CHILD_SAs, all of
        which must succeed (control.Waiter); other connections as iked does."""
        name = str(req["conn"])
        cfg = self.engine.config(name)
        if not cfg.mediated_by:
            return await self.control._up(req, time.monotonic())
        req = {"timeout": 60, **req}
        return await self.control._up(req, time.monotonic(),
                                      start=lambda conn, child, now: self._connect(conn, now))

    def _connect(self, name: str, now: float) -> None:
        self.mediation.connect(name, now)

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        """The mediation client's view, checked against the engine: a mediated IKE_SA that is up without
        its CHILD_SA carries no traffic and is not reported as established."""
        st: dict[str, Any] = _jsonable(dataclasses.asdict(self.mediation.status()))
        live = {sa.unique_id: sa for sa in self.engine.ike_sas()}
        for c in st["connections"]:
            sa = live.get(c.get("sa_id") or -1)
            if c["state"] == "established" and (sa is None or not sa.children):
                c["state"] = "no tunnel"
                c["reason"] = self._child_failed.get(c["name"]) or \
                    ("the mediated IKE_SA is gone" if sa is None else "the IKE_SA has no CHILD_SA")
        if self.nat is not None:
            st["nat"] = {**self.nat.as_dict(), "summary": self.nat.summary()}
        if self.portmap is not None:
            m = self.portmap.mapping
            st["port_mapping"] = {**m.as_dict(), "renewals": self.portmap.renewals} if m is not None \
                else {"error": self.portmap.error or "pending"}
        return {"ok": True, "status": st}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def _build(cfg: DaemonConfig, raw: dict[str, Any]) -> Daemon:
    client = check_section("[client]", raw.get("client", {}), CLIENT_CHECKS)
    return ClientDaemon(cfg, client)


def main(argv: list[str] | None = None) -> int:
    return run_main("mediation-client", "IKEv2 mediation client", argv, _build)
