"""Trap policies: swanctl's `start_action = trap`, ipsec.conf `auto=route`, the SQL configuration's
child_configs.start_action 1 (docs/gateway.md, "Trap policies"); iked and the gateway both use them.

A routed connection's CHILD_SAs are not negotiated at start: each gets an outbound policy of action
TRAP over its configured traffic selectors (`dynamic` is the side's address), under a reqid of its own.
The data plane drops matching traffic that has no SA and reports an acquire (the userspace data plane
at most one per policy a second, core_ike/io/acquire.py; XFRM: the kernel's XFRM_MSG_ACQUIRE); the
daemon then initiates that CHILD_SA, with its IKE_SA if none is up, as charon's trap manager does,
offering the triggering packet's own addresses, protocol and ports as the first traffic selectors
(RFC 7296 2.9), so that a responder which narrows picks the range holding that packet.
The CHILD_SA's own policies (same selectors, its own reqid) take the traffic from then on; the trap
stays, so that traffic after the CHILD_SA went starts a new one.

One attempt per trap at a time, whatever started it: acquires are ignored while an attempt started by
one is under way (until that CHILD_SA is up or failed, or its IKE_SA failed or went), while an IKE_SA
of the connection is being set up (`up`, a start at load, a keying try), while a keying try of the
connection is scheduled (RFC 7296 2.4 leaves retries to the initiator; the daemon's keyingtries), and
while a CHILD_SA of that config is up on an IKE_SA of the connection.

A keying try of an IKE_SA an acquire started asks for what that attempt asked for: the trap's CHILD_SA,
the packet's selectors first (`keying_try`), as charon's retried IKE_SA keeps its queued CHILD_SA task
with the packet's selectors; the connection's other CHILD_SAs wait for traffic of their own.

What `status` lists is what the data plane holds: a connection is routed with all its CHILD_SA configs
or none, and a trap the data plane refuses to install again goes; each says what it does (`state`).

Operators route and unroute at run time (`ikectl route|unroute NAME`, the gateway's `ikeme-ipsec
route|unroute`; docs/operations.md): a connection routed so stays routed over reloads while it is
loaded; one unrouted so that its config routes is routed again by the next reload, not before (a
refresh of the gateway's configuration database does not).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..codec.payloads import TrafficSelector as Ts
from ..errors import LocalError
from ..ike import events as ev
from ..ike import ts as tsmod
from ..ike.config import ChildConfig, IkeConfig
from ..ike.engine import Engine
from ..ike.sa import IkeSa
from ..io.dataplane import Acquire, Direction, PolicyAction, PolicyParams, TrafficSelector
from .config import _trap_target
from .control import EngineControl

log = logging.getLogger("core_ike.daemon.traps")

TRAP_REQID_BASE = 0x40000000  # trap policies' reqids, apart from the engine's CHILD_SA reqids (from 1)
PENDING_MAX = 120.0  # seconds after which an attempt no event ended no longer holds acquires back
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: a packet's ports are part of its selectors


Packet = tuple[Ts, Ts]  # (source, destination) selectors of the packet an acquire reports


@dataclass
class Trap:
    conn: str
    child: str
    reqid: int
    cfg: IkeConfig  # the config object routed (a reload that changes it routes again)
    policies: list[PolicyParams] = field(default_factory=list)
    pending: float | None = None  # when an acquire (or its keying try) initiated it; None: no attempt
    attempt: int | None = None  # the unique id of the IKE_SA carrying that attempt
    by_command: bool = False  # routed by `route` (kept over reloads), not by its start_action


@dataclass(frozen=True)
class Attempt:
    """The CHILD_SA an acquire asked for on a new IKE_SA: what a keying try of that IKE_SA asks for."""

    conn: str
    child: str
    packet: Packet | None


def trap_policies(cfg: IkeConfig, child: ChildConfig, reqid: int,
                  route_source: Callable[[str], str]) -> list[PolicyParams]:
    """The outbound TRAP policies of `child`: its local x remote selectors, `dynamic` resolved to the
    local address (or the one that routes to the peer) and the peer's address."""
    remote = next((a for a in cfg.remote_addrs if not a.startswith("%any")), None)
    if remote is None:
        raise LocalError(f"conn {cfg.name}: auto=route needs the peer's address (right=) to initiate to")
    try:
        ipaddress.ip_address(remote)
    except ValueError:
        raise LocalError(f"conn {cfg.name}: auto=route: {remote!r} is not an address") from None
    local = next((a for a in cfg.local_addrs if not a.startswith("%any")), None) or route_source(remote)
    pols = []
    for lt in child.local_ts:
        for rt in child.remote_ts:
            for lsel in _selectors(cfg.name, lt, local):
                for rsel in _selectors(cfg.name, rt, remote):
                    pols.append(PolicyParams(lsel, rsel, Direction.OUT, reqid, local, remote, PolicyAction.TRAP))
    return pols


def packet_selectors(e: Acquire) -> Packet | None:
    """The (source, destination) traffic selectors of the packet an acquire reports: its two addresses,
    its protocol and, for TCP, UDP and SCTP, its ports (RFC 7296 2.9, the initiator's first TSi and
    TSr). None when the data plane did not say (no addresses, or of two families)."""
    try:
        src, dst = ipaddress.ip_address(e.src), ipaddress.ip_address(e.dst)
    except ValueError:
        return None
    if src.version != dst.version or not 0 <= e.protocol <= 255:
        return None
    ports = e.protocol in PORT_PROTOCOLS and e.sport and e.dport
    return (tsmod.from_cidr(str(src), e.protocol, (e.sport, e.sport) if ports else (0, 65535)),
            tsmod.from_cidr(str(dst), e.protocol, (e.dport, e.dport) if ports else (0, 65535)))


def _ts_text(t: TrafficSelector) -> str:
    """A trap selector as swanctl prints one: 10.1.0.0/24, 10.1.0.0/24[tcp/443], 10.1.0.0/24[47]."""
    if not t.protocol:
        return str(t.subnet)
    proto = {6: "tcp", 17: "udp", 132: "sctp"}.get(t.protocol, str(t.protocol))
    if (t.port_start, t.port_end) == (0, 65535):
        return f"{t.subnet}[{proto}]"
    ports = str(t.port_start) if t.port_start == t.port_end else f"{t.port_start}-{t.port_end}"
    return f"{t.subnet}[{proto}/{ports}]"


def _selectors(conn: str, text: str, dynamic: str) -> list[TrafficSelector]:
    try:
        t = tsmod.parse(text, dynamic)
    except (LocalError, ValueError) as e:
        raise LocalError(f"conn {conn}: traffic selector {text!r}: {e}") from None
    first, last = ipaddress.ip_address(t.start_addr), ipaddress.ip_address(t.end_addr)
    nets = ipaddress.summarize_address_range(first, last)
    return [TrafficSelector(n, t.ip_proto, t.start_port, t.end_port) for n in nets]


class TrapManager:
    """The routed connections of one daemon: their policies in the data plane, and the acquires."""

    def __init__(self, engine: Engine, dp: Any, route_source: Callable[[str], str],
                 retrying: Callable[[str], bool] = lambda conn: False) -> None:
        self.engine = engine
        self.dp = dp
        self.route_source = route_source
        self.retrying = retrying  # is a keying try of this connection scheduled? (the daemon's keyingtries)
        self.traps: dict[tuple[str, str], Trap] = {}
        self.commanded: set[str] = set()  # connections routed by `route`, whatever their start_action
        self.unrouted: set[str] = set()  # connections `unroute` took out, until the next reload
        self._reqids: dict[tuple[str, str], int] = {}  # one reqid per (conn, child) for the daemon's life
        self._keys: dict[int, tuple[str, str]] = {}  # and back: an acquire's reqid to its (conn, child)
        self._attempts: dict[int, Attempt] = {}  # IKE_SAs being set up for an acquire, by unique id
        self._failed: dict[str, tuple[int, Attempt]] = {}  # per connection: the last of them that failed
        self.acquires = 0  # acquires that initiated a CHILD_SA
        self.ignored = 0  # acquires ignored (attempt under way or scheduled, CHILD_SA up, unknown reqid)

    # -- route / unroute ----------------------------------------------------------------------

    def route(self, name: str, by_command: bool = False) -> list[str]:
        """Install the trap policies of connection `name`'s CHILD_SAs (again after a change); the
        children routed. All of them or none: LocalError (no such connection, one that cannot be
        routed by the config loader's rules for start_action = "trap": one peer address, no mediation;
        a selector that cannot be a trap, nothing to route it with, a policy the data plane refused)
        leaves the connection unrouted. `by_command`: an operator's `route`, which outlasts reloads."""
        cfg = self.engine.config(name)
        _trap_target(f"conn {name}:", cfg)
        if not cfg.children:
            raise LocalError(f"conn {name}: no CHILD_SA configs to route")
        if self.dp is None:
            raise LocalError(f"conn {name}: no data plane to route it in ([daemon] dataplane = none)")
        plans: list[tuple[str, int, list[PolicyParams]]] = []  # the children whose traps are missing or stale
        for child in cfg.children:
            key = (cfg.name, child.name)
            old = self.traps.get(key)
            if old is not None and old.cfg is cfg:
                continue
            reqid = self._reqids.setdefault(key, TRAP_REQID_BASE + len(self._reqids) + 1)
            self._keys[reqid] = key
            pols = trap_policies(cfg, child, reqid, self.route_source)
            self._check_routable(cfg, pols)
            plans.append((child.name, reqid, pols))
        for child_name, reqid, pols in plans:
            key = (cfg.name, child_name)
            old = self.traps.pop(key, None)
            if old is not None:
                self._remove(old)
            trap = Trap(cfg.name, child_name, reqid, cfg)
            try:
                for p in pols:
                    self.dp.install_policy(p)
                    trap.policies.append(p)
            except Exception as e:  # noqa: BLE001 - the data plane refused: nothing of the connection stays
                self._remove(trap)
                self._drop(cfg.name)
                raise LocalError(f"conn {name}: trap policy not installed: {e}") from None
            self.traps[key] = trap
            log.info("conn %s{%s}: trap policies installed (reqid %d): %s", cfg.name, child_name, reqid,
                     ", ".join(f"{p.local.subnet} === {p.remote.subnet}" for p in pols))
        routed = [child.name for child in cfg.children]
        if by_command:
            self.commanded.add(cfg.name)
            self.unrouted.discard(cfg.name)
            for child_name in routed:
                self.traps[(cfg.name, child_name)].by_command = True
        return routed

    def _check_routable(self, cfg: IkeConfig, pols: list[PolicyParams]) -> None:
        """The userspace data plane routes a trap's remote selector into its TUN device: one holding
        the peer's own address would take the IKE messages to the peer with it (charon's
        kernel-libipsec refuses such a route too, "conflicts with IKE traffic")."""
        if getattr(self.dp, "name", "") != "userspace":
            return
        for p in pols:
            if ipaddress.ip_address(p.tunnel_dst) in p.remote.subnet:
                raise LocalError(f"conn {cfg.name}: auto=route: the remote selector {p.remote.subnet} holds the "
                                 f"peer's address {p.tunnel_dst}, whose IKE traffic the userspace data plane "
                                 "would then route into the tunnel (give the peer's subnet, rightsubnet=)")

    def unroute(self, name: str) -> int:
        """An operator's `unroute`: remove the trap policies of connection `name`, which then stays
        unrouted until the next reload (`sync(..., reload=True)`), whatever refreshes of the gateway's
        configuration database bring meanwhile; how many CHILD_SA configs were routed."""
        self.commanded.discard(name)
        n = self._drop(name)
        if n:
            self.unrouted.add(name)
        return n

    def _drop(self, name: str) -> int:
        gone = [k for k in self.traps if k[0] == name]
        for k in gone:
            self._remove(self.traps.pop(k))
            log.info("conn %s{%s}: trap policies removed", *k)
        return len(gone)

    def sync(self, configs: list[IkeConfig], reload: bool = False) -> None:
        """After a load, a reload (`reload`) or a refresh of the configuration database: every
        connection whose CHILD_SAs say start_action = trap, or that `route` routed, is routed (again
        when its config changed), unless `unroute` took it out since the last reload; the traps of
        connections gone or no longer routed go."""
        names = {c.name for c in configs}
        self.commanded &= names
        self.unrouted = set() if reload else self.unrouted & names
        self._failed = {k: v for k, v in self._failed.items() if k in names}
        wanted = {c.name: c for c in configs if c.name not in self.unrouted and (
            c.name in self.commanded or any(ch.start_action == "trap" for ch in c.children))}
        for name in {k[0] for k in self.traps} - set(wanted):
            self._drop(name)
        for name, cfg in wanted.items():
            stale = [k for k, t in self.traps.items() if k[0] == name and t.cfg is not cfg]
            for k in stale:
                self._remove(self.traps.pop(k))
            try:
                self.route(name, by_command=name in self.commanded)
            except LocalError as e:
                log.error("%s", e)

    def unroute_all(self) -> None:
        for name in sorted({k[0] for k in self.traps}):
            self._drop(name)

    def _remove(self, trap: Trap) -> None:
        for p in trap.policies:
            try:
                self.dp.delete_policy(p)
            except Exception as e:  # noqa: BLE001 - the rest still go
                log.warning("conn %s{%s}: trap policy %s not removed: %s", trap.conn, trap.child, p.remote.subnet, e)

    def status(self, now: float) -> list[dict[str, Any]]:
        """Each routed CHILD_SA config (`ikectl status` of every daemon, `ikeme-ipsec status`): its
        reqid, the trap policies' selectors, who routed it, what it is doing (`state`), for how long an
        attempt an acquire started is under way and whether a CHILD_SA of it is up."""
        by_conn: dict[str, list[IkeSa]] = {}  # one pass over the IKE_SAs, not one per trap
        for sa in self.engine.ike_sas():
            by_conn.setdefault(sa.config.name, []).append(sa)
        out = []
        for t in self.traps.values():
            sas = by_conn.get(t.conn, [])
            up = any(c.name == t.child for sa in sas for c in sa.children.values())
            state = self.state(t, now, sas, up)
            out.append({"name": t.conn, "child": t.child, "reqid": t.reqid,
                        "local-ts": sorted({_ts_text(p.local) for p in t.policies}),
                        "remote-ts": sorted({_ts_text(p.remote) for p in t.policies}),
                        "routed-by": "command" if t.by_command else "config", "state": state,
                        "acquire-pending": round(now - t.pending, 1)
                        if state == "acquire" and t.pending is not None else None,
                        "child-up": up})
        return out

    def state(self, t: Trap, now: float, sas: list[IkeSa], child_up: bool) -> str:
        """What routed CHILD_SA config `t` does now (`sas`: the IKE_SAs of its connection; `child_up`:
        a CHILD_SA of it is up on one): "acquire" (an attempt a packet started, or its keying try, is
        under way), "child-up", "keying-try" (one of the connection is scheduled), "connecting" (an
        IKE_SA of the connection is being set up by `up` or a start) or "waiting" (for traffic). In the
        middle three an acquire starts nothing."""
        if self._under_way(t, now):
            return "acquire"
        if child_up:
            return "child-up"
        if self.retrying(t.conn):
            return "keying-try"
        if any(not sa.established for sa in sas):
            return "connecting"
        return "waiting"

    def routed(self) -> dict[str, list[str]]:
        """Routed connections and their CHILD_SA configs (the status commands)."""
        out: dict[str, list[str]] = {}
        for conn, child in self.traps:
            out.setdefault(conn, []).append(child)
        return out

    # -- acquires -----------------------------------------------------------------------------

    def on_acquire(self, e: Acquire, now: float) -> bool:
        """Traffic met trap `e.reqid` without an SA: initiate its CHILD_SA unless an attempt is under
        way or one is up; True when it initiated."""
        key = self._keys.get(e.reqid)
        trap = self.traps.get(key) if key is not None else None
        if trap is None:
            self.ignored += 1
            log.debug("acquire for reqid %d (%s -> %s): no trap of ours", e.reqid, e.src, e.dst)
            return False
        if self._under_way(trap, now):
            self.ignored += 1
            return False
        if self.retrying(trap.conn):
            self.ignored += 1
            log.debug("acquire for %s{%s} (%s -> %s): a keying try of the connection is scheduled",
                      trap.conn, trap.child, e.src, e.dst)
            return False
        if self._child_up(trap):
            self.ignored += 1
            log.debug("acquire for %s{%s} (%s -> %s): the CHILD_SA is up, the packet outside its selectors",
                      trap.conn, trap.child, e.src, e.dst)
            return False
        packet = packet_selectors(e)
        log.info("acquire for %s{%s} (%s -> %s, protocol %d): initiating%s", trap.conn, trap.child, e.src, e.dst,
                 e.protocol, _first(packet))
        self.acquires += 1
        try:
            sa = self.engine.initiate(trap.conn, trap.child, now, packet=packet)
        except LocalError as err:
            log.error("acquire for %s{%s}: cannot initiate: %s", trap.conn, trap.child, err)
            return False
        self._started(Attempt(trap.conn, trap.child, packet), sa.unique_id, sa.established, now)
        return True

    def keying_try(self, conn: str, failed: int, now: float) -> bool:
        """The daemon's keying try (RFC 7296 2.4 leaves retries to the initiator) after IKE_SA `failed`
        of connection `conn`: when an acquire started that IKE_SA, initiate its CHILD_SA again with the
        packet's selectors first (RFC 7296 2.9) and say True (also when that CHILD_SA is up meanwhile,
        by `up` or the peer: nothing to try then); False when no acquire started it (the daemon then
        brings the connection up as configured). LocalError: the connection or that CHILD_SA config is
        no longer loaded."""
        hit = self._failed.get(conn)
        if hit is None or hit[0] != failed:
            return False
        del self._failed[conn]
        a = hit[1]
        trap = self.traps.get((a.conn, a.child))
        if trap is not None and self._other_child(trap, -1):
            log.info("keying try for %s{%s}: not needed, the CHILD_SA is up meanwhile", a.conn, a.child)
            return True
        log.info("keying try for %s{%s}: initiating%s", a.conn, a.child, _first(a.packet))
        sa = self.engine.initiate(a.conn, a.child, now, packet=a.packet)
        self._started(a, sa.unique_id, sa.established, now)
        return True

    def _started(self, a: Attempt, ike: int, established: bool, now: float) -> None:
        """An attempt for trap (a.conn, a.child) went out on IKE_SA `ike`; a new IKE_SA is remembered
        until it is up or failed, for the keying try that follows a failure."""
        trap = self.traps.get((a.conn, a.child))
        if trap is not None:
            trap.pending, trap.attempt = now, ike
        if not established:
            # IKE_SAs closed while being set up (`down`, a reload) end without an event
            self._attempts = {u: x for u, x in self._attempts.items() if self.engine.find_sa(u) is not None}
            self._attempts[ike] = a

    def _under_way(self, trap: Trap, now: float) -> bool:
        """Is the attempt an acquire started for `trap` still going? Its IKE_SA is there (a `down` or a
        reload closes one being set up without an event) and no outcome came for PENDING_MAX."""
        return (trap.pending is not None and now - trap.pending < PENDING_MAX and trap.attempt is not None
                and self.engine.find_sa(trap.attempt) is not None)

    def _child_up(self, trap: Trap) -> bool:
        for sa in self.engine.ike_sas():
            if sa.config.name != trap.conn:
                continue
            if not sa.established:
                return True  # an IKE_SA of the connection is being set up (keyingtries, `up`)
            if any(c.name == trap.child for c in sa.children.values()):
                return True
        return False

    def _other_child(self, trap: Trap, gone: int) -> bool:
        return any(c.name == trap.child and uid != gone for sa in self.engine.ike_sas() if sa.config.name == trap.conn
                   for uid, c in sa.children.items())

    def on_event(self, e: object) -> None:
        """An attempt ends with its CHILD_SA up or failed, or its IKE_SA failed or gone; a failed one
        an acquire started is kept for the keying try. When the last CHILD_SA of a trapped config
        goes, its traps are installed again: the XFRM data plane's kernel keeps one policy per
        selector, which the CHILD_SA's replaced and its deletion removed (the userspace data plane
        kept the trap: installing it again changes nothing)."""
        if isinstance(e, ev.ChildSaDeleted):
            t = self.traps.get((e.ike_name, e.name))
            if t is not None and not self._other_child(t, e.unique_id):
                self._reinstall(t)
        elif isinstance(e, ev.ChildSaEstablished | ev.ChildSaFailed):
            t = self.traps.get((e.ike_name, e.name))
            if t is not None:
                t.pending = None
        elif isinstance(e, ev.IkeSaEstablished):
            self._attempts.pop(e.unique_id, None)
        elif isinstance(e, ev.IkeSaFailed | ev.IkeSaDeleted):
            a = self._attempts.pop(e.unique_id, None)
            if a is not None and isinstance(e, ev.IkeSaFailed):
                self._failed[e.name] = (e.unique_id, a)
            for t in self.traps.values():
                if t.attempt == e.unique_id:
                    t.pending = None


    def _reinstall(self, t: Trap) -> None:
        """A trap whose policy the data plane refuses again is no longer one: it goes (`status` stops
        listing it) until `route`, a reload or a refresh of the gateway's configuration database
        installs it again."""
        try:
            for p in t.policies:
                self.dp.install_policy(p)
        except Exception as err:  # noqa: BLE001 - any refusal of the data plane: the trap is gone
            del self.traps[(t.conn, t.child)]
            self._remove(t)
            log.error("conn %s{%s}: trap policy not reinstalled (%s): unrouted; `route %s` installs it again",
                      t.conn, t.child, err, t.conn)


def _first(packet: Packet | None) -> str:
    return "" if packet is None else \
        f", first selectors {tsmod.to_text(packet[0])} === {tsmod.to_text(packet[1])}"


def install_control(control: EngineControl, traps: Callable[[], TrapManager | None],
                    now: Callable[[], float]) -> None:
    """The control socket's `route` and `unroute`, and the routed connections (`routed`) in the reply
    to `status` of every daemon, iked's and the mediation daemons' alike, for a daemon whose trap
    manager `traps()` gives (None until the data plane runs, and in the workers that do not initiate)."""

    def manager() -> TrapManager:
        t = traps()
        if t is None:
            raise LocalError("no trap policies here (no data plane, or not the worker that initiates)")
        return t

    async def route(req: dict[str, Any]) -> dict[str, Any]:
        name = str(req["conn"])
        m = manager()
        try:
            children = m.route(name, by_command=True)
        except LocalError as e:
            return {"ok": False, "error": f"cannot route {name!r}: {e}"}
        return {"ok": True, "conn": name, "children": children}

    async def unroute(req: dict[str, Any]) -> dict[str, Any]:
        name = str(req["conn"])
        m = manager()
        m.engine.config(name)  # an unknown name: "no connection named ..."
        if not m.unroute(name):
            return {"ok": False, "error": f"conn {name!r} is not routed"}
        return {"ok": True, "conn": name}

    def routed() -> list[dict[str, Any]]:
        t = traps()
        return t.status(now()) if t is not None else []

    control.extra.update({"route": route, "unroute": unroute})
    control.status_parts["routed"] = routed
