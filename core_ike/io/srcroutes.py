"""Source routes for the kernel (XFRM) data plane, as strongSwan's kernel-netlink plugin installs them.

An outbound XFRM policy takes a packet only after the kernel routed it and picked its source address:
a road warrior's traffic to the gateway's subnet would leave with its physical address, which matches
no policy (its local selector is the virtual IP of RFC 7296 2.19). So for every outbound tunnel
policy whose local selector holds one of this host's addresses (the virtual IP, or a gateway's inside
address), a route to the remote selector names that address as its preferred source (`src`), with the
next hop toward the peer. The routes live in a table of their own (charon: `routing_table = 220`),
looked up before the main table through one rule (`routing_table_prio = 220`), so the main table is
never touched (`ip route show table 220` lists them, as under charon). `install_routes = false`
installs none (docs/configuration.md).

The choices (the source address, the next hop) are pure functions over what netlink reports. A
route's lookup, addition and deletion are single rtnetlink requests from the caller's thread
(`RouteSocket`); our addresses come from the `NetlinkWorker`'s list, kept current by the kernel's
address notifications once the event loop runs; the rule and the rare full route dump run in the
worker (pyroute2).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import NetlinkError  # type: ignore[import-untyped]

from .dataplane import PolicyParams
from .netlink import RT_SCOPE_UNIVERSE, Address, NetlinkWorker, RouteSocket

log = logging.getLogger("core_ike.io.xfrm")

ROUTING_TABLE = 220  # charon's default (strongswan.conf charon.routing_table, Debian's build)
ROUTING_TABLE_PRIO = 220  # charon.routing_table_prio
VIP_LABEL = 220  # an IPv6 virtual IP's address label: none of the kernel's default labels (0-12), as charon's
RT_TABLE_LOCAL = 255  # linux/rtnetlink.h
RTN_UNICAST = 1
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RouteSettings:
    """charon's `install_routes`, `routing_table`, `routing_table_prio` ([daemon] of iked's TOML)."""

    install: bool = True
    table: int = ROUTING_TABLE
    priority: int = ROUTING_TABLE_PRIO


@dataclass(frozen=True)
class RouteRow:
    """What a route dump says of one route (only what the next-hop choice reads)."""

    dst: Network
    table: int
    type: int
    priority: int
    gateway: str | None
    oif: int | None


@dataclass(frozen=True)
class SourceRoute:
    """`ip route replace DST [via GATEWAY] dev OIF src SRC table TABLE proto static` (scope universe)."""

    dst: Network
    src: str
    gateway: str | None
    oif: int
    table: int


def pick_source(addresses: Iterable[Address], local: Network) -> Address | None:
    """The first of our addresses inside the local selector (charon: get_address_by_ts)."""
    return next((a for a in addresses if a.version == local.version and a in local), None)


def pick_nexthop(rows: Iterable[RouteRow], peer: Address, own_table: int) -> RouteRow | None:
    """The route the kernel would take toward the peer without our table: the longest prefix holding it,
    then the lowest metric, over unicast routes of every table but ours and the local one (charon
    filters its own table out of the dump the same way; our table may hold a default route that
    covers the peer)."""
    best: RouteRow | None = None
    for r in rows:
        if r.table in (own_table, RT_TABLE_LOCAL) or r.type != RTN_UNICAST or r.dst.version != peer.version:
            continue
        if peer not in r.dst or r.oif is None:
            continue
        if best is None or (r.dst.prefixlen, -r.priority) > (best.dst.prefixlen, -best.priority):
            best = r
    return best


def peer_of(policy: PolicyParams) -> Address | None:
    try:
        return ipaddress.ip_address(policy.tunnel_dst)
    except ValueError:
        return None


def plan_route(policy: PolicyParams, addresses: Iterable[Address], rows: Iterable[RouteRow],
               table: int) -> SourceRoute | str:
    """The route for an outbound policy, or why there is none."""
    local, remote = policy.local.subnet, policy.remote.subnet
    src = pick_source(addresses, local)
    if src is None:
        return f"no local address in {local}"
    peer = peer_of(policy)
    if peer is None:
        return f"no peer address ({policy.tunnel_dst!r})"
    hop = pick_nexthop(rows, peer, table)
    if hop is None or hop.oif is None:
        return f"no route to the peer {peer}"
    # the route's next hop toward the peer, or the peer itself when it is on-link (charon's get_nexthop
    # falls back to the destination); only of the selectors' family (IPv6 inside IPv4 ESP: the device)
    via = hop.gateway or str(peer)
    gateway = via if ipaddress.ip_address(via).version == remote.version else None
    return SourceRoute(remote, str(src), gateway, hop.oif, table)


def _row(m: Any, family: int) -> RouteRow:
    dst = m.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return RouteRow(ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False), int(m.get("table")),
                    int(m["type"]), int(m.get_attr("RTA_PRIORITY") or 0), m.get_attr("RTA_GATEWAY"),
                    m.get_attr("RTA_OIF"))


def _dump(ipr: Any, family: int) -> list[RouteRow]:
    return [_row(m, family) for m in ipr.get_routes(family=family)]


class SourceRoutes:
    """The routes of the outbound policies of one XFRM data plane, and the rule that reaches them.

    The kernel keeps one policy per selector pair and direction: a CHILD_SA's policy replaces the trap
    policy of the same selectors, and deleting it removes both. So a route belongs to the kernel
    policies (selector pairs) installed toward its destination, and goes with the last of them."""

    def __init__(self, worker: NetlinkWorker, settings: RouteSettings,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.worker = worker
        self.settings = settings
        self.sock = RouteSocket()
        if loop is not None:  # our address list from the kernel's notifications, not a dump per route
            worker.watch_addresses(loop)
        self._owners: dict[Network, set[tuple[Any, Any]]] = {}  # destination -> selector pairs
        self.routes: dict[Network, SourceRoute] = {}  # as installed
        self._rules: set[int] = set()  # families whose rule is in place (added by us or there before)
        self.labels: set[str] = set()  # IPv6 virtual IPs we gave an address label

    def label_vip(self, address: str) -> bool:
        """Give an IPv6 virtual IP an address label no destination has (RFC 6724 §2.1 policy table), as
        charon does where routes can name an IPv6 source: the default source address selection then
        prefers, by rule 6 (matching label), another address for destinations outside the tunnels, and
        the virtual IP is used where our routes name it (`src`), toward the remote selectors. Without
        the label it could win by rule 8 (longest matching prefix) for a destination near it, and such
        traffic would leave outside the tunnel with an address that belongs to it. False: not labelled
        (IPv4, a label there already, or refused: logged)."""
        if ipaddress.ip_address(address).version != 6:
            return False
        try:
            self.sock.label(address, VIP_LABEL)
        except (NetlinkError, OSError) as e:
            if getattr(e, "code", None) != errno.EEXIST:
                log.warning("unable to add address label for virtual IP %s: %s", address, e)
            return False
        self.labels.add(address)
        log.debug("address label %d for virtual IP %s", VIP_LABEL, address)
        return True

    def unlabel_vip(self, address: str) -> None:
        if address not in self.labels:
            return
        self.labels.discard(address)
        try:
            _quiet(self.sock.label, address, VIP_LABEL, delete=True)
        except (NetlinkError, OSError) as e:
            log.warning("virtual IP %s: deleting its address label failed: %s", address, e)

    def add(self, policy: PolicyParams) -> SourceRoute | None:
        """An outbound policy was installed: its route, installed now (None: none needed or possible;
        a kernel refusal is logged, the policy stays, as charon does)."""
        dst = policy.remote.subnet
        self._owners.setdefault(dst, set()).add((policy.local, policy.remote))
        if dst in self.routes:
            return self.routes[dst]
        table = self.settings.table
        try:
            peer = peer_of(policy)
            plan = plan_route(policy, self._addresses(), self._toward(peer) if peer is not None else [], table)
            if isinstance(plan, SourceRoute):
                self._rule(_family(dst))
                self.sock.replace(str(dst), plan.oif, plan.src, table=table, gateway=plan.gateway,
                                  scope=RT_SCOPE_UNIVERSE)  # as charon's, with or without a next hop
        except (NetlinkError, OSError) as e:
            log.warning("unable to install source route for %s: %s", dst, e)
            return None
        if isinstance(plan, str):
            log.debug("no source route for %s: %s", dst, plan)
            return None
        self.routes[dst] = plan
        log.info("installed route %s%s src %s in table %d", dst, f" via {plan.gateway}" if plan.gateway else "",
                 plan.src, table)
        return plan

    def update(self, old: PolicyParams, new: PolicyParams) -> SourceRoute | None:
        """An outbound policy's template moved to another peer address (RFC 7296 §2.23): its route is
        planned again toward the new peer and replaced when the next hop, device or source differ."""
        dst = new.remote.subnet
        owners = self._owners.get(old.remote.subnet)
        if owners is not None:
            owners.discard((old.local, old.remote))
        installed = self.routes.get(dst)
        if installed is None:
            return self.add(new)
        self._owners.setdefault(dst, set()).add((new.local, new.remote))
        try:
            peer = peer_of(new)
            plan = plan_route(new, self._addresses(), self._toward(peer) if peer is not None else [],
                              self.settings.table)
            if isinstance(plan, SourceRoute) and plan != installed:
                self.sock.replace(str(dst), plan.oif, plan.src, table=plan.table, gateway=plan.gateway,
                                  scope=RT_SCOPE_UNIVERSE)
        except (NetlinkError, OSError) as e:
            log.warning("unable to move source route for %s: %s", dst, e)
            return installed
        if isinstance(plan, str):  # e.g. no route to the new peer: the old next hop leads nowhere now
            log.info("source route %s stays toward the old peer: %s", dst, plan)
            return installed
        if plan != installed:
            self.routes[dst] = plan
            log.info("moved route %s%s src %s in table %d", dst, f" via {plan.gateway}" if plan.gateway else "",
                     plan.src, plan.table)
        return plan

    def remove(self, policy: PolicyParams) -> None:
        """An outbound policy was deleted: its route goes with the last policy toward its destination."""
        dst = policy.remote.subnet
        owners = self._owners.get(dst)
        if owners is None:
            return
        owners.discard((policy.local, policy.remote))
        if owners:
            return
        del self._owners[dst]
        route = self.routes.pop(dst, None)
        if route is None:
            return
        try:
            _quiet(self.sock.delete, str(dst), route.table)
        except (NetlinkError, OSError) as e:
            log.warning("route %s: deleting failed: %s", dst, e)
            return
        log.info("removed route %s", dst)

    def close(self) -> None:
        """Remove every route and the rules we added (the daemon stops)."""
        routes, self.routes = list(self.routes.values()), {}
        self._owners.clear()
        rules, self._rules = set(self._rules), set()
        labels, self.labels = set(self.labels), set()
        try:
            for r in routes:
                _quiet(self.sock.delete, str(r.dst), r.table)
            for a in labels:
                _quiet(self.sock.label, a, VIP_LABEL, delete=True)
            if rules:
                self.worker.call(self._del_rules(rules))
        except Exception as e:  # noqa: BLE001 - stopping: logged, nothing else to do
            log.warning("source routes: cleaning up failed: %s", e)
        finally:
            self.sock.close()

    def _del_rules(self, families: set[int]) -> Callable[[Any], None]:
        """The rules go once the table is empty (as charon removes its rule when it stops), not while
        it holds routes of another process sharing it (iked's workers, docs/operations.md): those stay
        reachable until the last one stops."""
        table = self.settings.table

        def delete(ipr: Any) -> None:
            for f in families:
                if any(int(m.get("table")) == table for m in ipr.get_routes(family=f, table=table)):
                    log.info("table %d still holds routes of another process: its rule stays", table)
                    continue
                _quiet(ipr.rule, "del", table=table, priority=self.settings.priority, family=f)

        return delete

    def _addresses(self) -> list[Address]:
        cached = self.worker.cached_addresses()
        return cached if cached is not None else self.worker.call(self.worker.addresses)

    def _toward(self, peer: Address) -> list[RouteRow]:
        """The routes `pick_nexthop` chooses from: the kernel's own lookup of the peer (one request) when
        our table did not answer it, else every route of the peer's family (a full tunnel's default
        route in our table covers the peer; the dump grows with our table, so it is the exception)."""
        try:
            r = self.sock.lookup(str(peer))
        except NetlinkError:  # e.g. ENETUNREACH: no route at all
            return []
        if r.table != self.settings.table:
            return [RouteRow(ipaddress.ip_network(peer), r.table, r.type, 0, r.gateway, r.oif)]
        family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
        return self.worker.call(lambda ipr: _dump(ipr, family))

    def _rule(self, family: int) -> None:
        """`ip rule add priority PRIO table TABLE` once per family (kept while routes come and go)."""
        if family in self._rules:
            return

        def add(ipr: Any) -> None:
            try:
                ipr.rule("add", table=self.settings.table, priority=self.settings.priority, family=family)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # EEXIST: another worker's, or left by a daemon that died
                    raise

        self.worker.call(add)
        self._rules.add(family)


def _family(net: Network) -> int:
    return socket.AF_INET6 if net.version == 6 else socket.AF_INET


def _quiet(fn: Any, *args: Any, **kw: Any) -> None:
    """A route (or address label) already gone is no error: the kernel flushes routes whose preferred
    source address is deleted, and those through a device that went."""
    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL):
            raise
