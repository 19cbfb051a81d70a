"""Many-port probing between a random-port APDM NAT and an EIM/APDF NAT (sans-IO; our extension).

The hard case of RFC 4787: alice behind a NAT with endpoint-independent mapping and address-and-port-
dependent filtering (EIM/APDF, "port-restricted", §4.1, §5), bob behind one with address-and-port-
dependent mapping that picks each new mapping's port at random (APDM, §4.1, §4.2.2). Bob's checks to
alice's server-reflexive endpoint leave from ports nobody announced, so alice's filter drops them; no
prediction helps (predict.py is for sequential ports). Both sides therefore make many five-tuples and
let the birthday paradox bring one pair of them together (the technique Tailscale and others use):

- the opener (bob, APDM random) sends a connectivity check ([ME] §5.1) from each of `ports` extra
  local UDP sockets to alice's server-reflexive endpoint: his NAT makes one mapping per socket, each on
  a random public port, each letting in what comes from alice's endpoint (RFC 4787 §5 APDF);
- the sprayer (alice, EIM/APDF) sends checks from her usual NAT-T socket to up to `probes` distinct
  random ports of bob's public address, paced at `rate`: her NAT keeps its one mapping (EIM) and opens
  its filter toward each probed port.

A probe that lands on one of bob's mappings reaches the socket behind it; one of bob's checks that
leaves through a mapping alice already probed reaches alice. Either way the check list of the side
that received it answers and sends its own triggered check (RFC 8445 §7.3.1.4), and the pair (bob's
extra socket, alice's endpoint) succeeds on both sides as any other pair does: the mediated IKE_SA
and its ESP-in-UDP (RFC 3948) then run over that extra socket, which bob's adapter keeps open while
the IKE_SA lives (it is a NAT-T socket like 4500). With m = 64512 ports (1024-65535), k = `ports`
mappings and n probes, a probe misses every mapping with probability (1 - k/m)^n: about 2 % at
k = 256, n = 1024, and 0.03 % at n = 2048; about m/k = 252 probes are needed on average.

Bounds: the opener sends at most `ports * rounds` checks (512 by default), the sprayer at most `probes`
(2048), both within `time` seconds (5 s) of the start; then the attempt ends, the extra sockets close
(but the one a succeeded pair uses) and the check list goes on as before (the relay, when there is
one, is selected at once). The controlling side ([ME] §5.4) holds a succeeded RELAYED pair back until
then (CheckList.hold_relay).

Which side does what follows from both NATs' behaviour (RFC 5780 discovery, mediation_client/natdisc.py),
which each of our clients puts in its ME_CONNECT as N(IKEME_NAT_BEHAVIOUR) (natinfo.py) and our server
copies to our own clients only: strongSwan peers never see it and never take part.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Protocol

from ..constants import MeEndpointType
from ..rng import Rng
from .checklist import (
    CheckList,
    CheckListEvent,
    CheckListFailed,
    CheckListStopped,
    CheckListSucceeded,
    Datagram,
    PairState,
    PairStateChanged,
)
from .checks import KeyRule, encode_check, mac_key, make_check, request_endpoint
from .endpoints import MAPPED_PRIORITY, Addr, Endpoint

log = logging.getLogger("core_ike.me")

PORT_MIN, PORT_MAX = 1024, 65535  # where NATs put their mappings (RFC 6056 §2.1)
# message IDs of the probes' checks: above any pair's (pair ids count from 1, at most max_pairs of
# them), so a check list that receives an answer to one drops it as "response for unknown pair"
PROBE_MID = 0x100000
RESULTS = 32  # outcomes kept for the status


class Role(Enum):
    OPEN = "open"  # behind the random APDM NAT: many local sockets toward the peer's one endpoint
    SPRAY = "spray"  # behind the EIM/APDF NAT: one socket toward many ports of the peer's address


@dataclass(frozen=True)
class NatKind:
    mapping: str  # EIM | ADM | APDM | none | ...
    filtering: str  # EIF | ADF | APDF | none | ...
    random: bool  # new mappings' ports are random (APDM allocation)


_SUMMARY = re.compile(r"mapping (\S+?),? filtering (\S+?)(?:,|$)")


@lru_cache(maxsize=64)  # the same few summaries (ours, the peers') are read for every setup
def parse_nat(text: str | None) -> NatKind | None:
    """The NAT behaviour from natdisc's summary ("mapping APDM, filtering APDF, ..., random ports, ...");
    None when it is missing or not of that form."""
    if not text:
        return None
    m = _SUMMARY.match(text)
    if m is None:
        return None
    return NatKind(m.group(1), m.group(2), "random ports" in text)


def learns(own: str | None, peer: str | None) -> bool:
    """One NAT is EIM/ADF, the other APDM: the direct pair is learnt from a retransmitted check."""
    o, p = parse_nat(own), parse_nat(peer)
    if o is None or p is None:
        return False
    return any(a.mapping == "EIM" and a.filtering == "ADF" and b.mapping == "APDM" for a, b in ((o, p), (p, o)))


def plan(own: str | None, peer: str | None) -> Role | None:
    """Our role, from our NAT's behaviour and the peer's; None: no probing (any other pair of NATs:
    the usual checks, port prediction or the relay serve them, or nothing does)."""
    o, p = parse_nat(own), parse_nat(peer)
    if o is None or p is None:
        return None
    if o.mapping == "APDM" and o.random and p.mapping == "EIM" and p.filtering == "APDF":
        return Role.OPEN
    if o.mapping == "EIM" and o.filtering == "APDF" and p.mapping == "APDM" and p.random:
        return Role.SPRAY
    return None


@dataclass(frozen=True)
class ProbeConfig:
    """Bounds of one probing attempt (docs/nat-lab.md §9.1, docs/protocol.md §11.17)."""

    enabled: bool = True
    ports: int = 256  # opener: extra local sockets (= new mappings of its NAT)
    probes: int = 2048  # sprayer: distinct ports of the peer's address probed at most
    rate: float = 1000.0  # checks per second, either role
    tick: float = 0.01  # the pacing timer; a late timer catches up by at most `burst` checks
    burst: int = 64
    rounds: int = 2  # opener: its checks go out this many times (a lost one; alice probing late)
    reopen: float = 2.0  # opener: seconds between its rounds
    time: float = 5.0  # the attempt ends this long after its start
    port_range: tuple[int, int] = (PORT_MIN, PORT_MAX)  # sprayer: where the peer's NAT puts its mappings
    # attempts under way at once: what a peer (or one claiming another's address as its endpoint) can make
    # us send is at most max_active * probes checks per `time` seconds
    max_active: int = 4
    # a mediation SA that just came up holds its ME_CONNECTs this long at most for our NAT's discovery
    # (MediationClientConfig.nat_pending): without our NAT's behaviour in them the peer cannot take part
    nat_wait: float = 3.0
    # an address-restricted NAT (EIM/ADF) facing an APDM one: the APDM side's checks come from mappings
    # nobody announced, and its first ones may reach the ADF NAT before that side's own first check
    # toward the APDM side's address opened the filter (RFC 4787 §5); its retransmission (CheckListConfig.rto,
    # 25 ms later) gets through and is learnt as peer-reflexive (RFC 8445 §7.3.1.3). The controlling side
    # holds a succeeded RELAYED pair back this long after the checks start, so that the direct pair can win
    # (CheckList.hold_relay: the relay is the last resort)
    learn_wait: float = 0.15


class PortPool(Protocol):
    """The adapter's extra UDP sockets (core_ike/io/portpool.py): bound on `ip` at ports the kernel
    picks, read as NAT-T sockets (RFC 3948 §2.2 demux) and usable as the local endpoint of IKE_SAs."""

    def open(self, ip: str, count: int) -> list[Addr]: ...

    def close(self, addrs: Iterable[Addr]) -> None: ...


@dataclass(frozen=True)
class ProbeStarted:
    """Many-port probing began for a connect ID (event)."""

    connect_id: str
    role: Role
    target: Addr  # opener: the peer's endpoint; sprayer: the peer's address (port 0)
    ports: int  # opener: sockets opened; sprayer: ports it may probe


@dataclass(frozen=True)
class ProbeEnded:
    """Many-port probing ended (event): `ok` when a pair through it succeeded, with what it cost."""

    connect_id: str
    role: Role
    ok: bool
    packets: int
    seconds: float
    reason: str


@dataclass(frozen=True)
class ProbeSpec:
    """What one side probes: its role, the check list's connect ID and keys (own, peer's), where to."""

    role: Role
    connect_id: bytes
    keys: tuple[bytes, bytes]
    target: Addr  # opener: the peer's server-reflexive endpoint; sprayer: its address (the port unused)
    base: Addr  # sprayer: our NAT-T socket the probes leave from
    locals: tuple[Addr, ...] = ()  # opener: the extra sockets
    key_rule: KeyRule = KeyRule.SENDER


class PortProbe:
    """One connect ID's probing, on one side."""

    def __init__(self, spec: ProbeSpec, now: float, rng: Rng, cfg: ProbeConfig) -> None:
        self.role = role = spec.role
        self.connect_id = spec.connect_id
        self.target = spec.target
        self.base = spec.base
        self.locals = list(spec.locals)
        self.started = now
        self.deadline = now + cfg.time
        self.cfg = cfg
        self.rng = rng
        self._key = mac_key(False, True, spec.keys[0], spec.keys[1], spec.key_rule)
        self.sent = 0
        lo, hi = cfg.port_range
        free = hi - lo + 1 - (lo <= spec.target[1] <= hi)  # the ports a sprayer can probe
        self.limit = len(self.locals) * max(1, cfg.rounds) if role is Role.OPEN else max(0, min(cfg.probes, free))
        self._probed: set[int] = {spec.target[1]}  # sprayer: ports already probed (the srflx one is a pair)
        self._next = now
        self.keep: set[Addr] = set()  # extra sockets a succeeded pair uses
        self.result: ProbeEnded | None = None
        self.reported = False  # its ProbeEnded event was handed out
        self._out: list[Datagram] = []

    @property
    def active(self) -> bool:
        return self.result is None

    def get_timer(self) -> float | None:
        if not self.active:
            return None
        return self.deadline if self.sent >= self.limit else min(self._next, self.deadline)

    def handle_timer(self, now: float) -> None:
        if not self.active:
            return
        if now >= self.deadline:
            self.end(now, False, f"no pair met within {self.cfg.time:g} s ({self.cost()})")
            return
        due = self._due(now)
        for _ in range(min(due, self.cfg.burst)):
            self._send_one()
        self._next = now + self.cfg.tick

    def _due(self, now: float) -> int:
        """Checks the schedule allows by `now` beyond those sent: paced at `rate`; the opener's rounds
        start `reopen` seconds apart, each one check per extra socket."""
        elapsed = now - self.started
        if self.role is Role.OPEN:
            n, allowed = len(self.locals), 0
            for r in range(max(1, self.cfg.rounds)):
                t = elapsed - r * self.cfg.reopen
                if t < 0 or (r > 0 and self.cfg.reopen <= 0):
                    break
                allowed += min(n, 1 + int(t * self.cfg.rate))
        else:
            allowed = 1 + int(elapsed * self.cfg.rate)
        return max(0, min(allowed, self.limit) - self.sent)

    def _send_one(self) -> None:
        mid = PROBE_MID + self.sent
        if self.role is Role.OPEN:
            local, remote = self.locals[self.sent % len(self.locals)], self.target
        else:
            local, remote = self.base, (self.target[0], self._new_port())
        check = make_check(False, mid, self.connect_id, request_endpoint(), self._key)
        self._out.append((encode_check(check), local, remote))
        self.sent += 1

    def _new_port(self) -> int:
        lo, hi = self.cfg.port_range
        span = hi - lo + 1
        while True:  # distinct ports; 2048 of 64512 by default, so a draw rarely repeats
            port = lo + int.from_bytes(self.rng.bytes(3), "big") % span
            if port not in self._probed:
                self._probed.add(port)
                return port

    def cost(self) -> str:
        if self.role is Role.OPEN:
            return f"{self.sent} checks from {len(self.locals)} extra ports"
        return f"{self.sent} probes to ports of {self.target[0]}"

    def succeeded(self, local: Addr, remote: Addr, now: float) -> None:
        """A direct pair of this connect ID succeeded: probing is done (it or the usual checks won)."""
        if local in self.locals:
            self.keep.add(local)
        if self.active:
            self.end(now, True, f"pair {local[0]}[{local[1]}] - {remote[0]}[{remote[1]}] succeeded "
                                f"after {now - self.started:.2f} s ({self.cost()})")

    def end(self, now: float, ok: bool, reason: str) -> None:
        if self.result is None:
            self.result = ProbeEnded(self.connect_id.hex(), self.role, ok, self.sent, now - self.started, reason)
            (log.info if ok else log.warning)("many-port probing (%s) for %s ended: %s", self.role.value,
                                              self.connect_id.hex(), reason)

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out


def peer_srflx(endpoints: Sequence[Endpoint]) -> Endpoint | None:
    """The peer's best server-reflexive endpoint (its EIM mapping; a port mapping is not one)."""
    srflx = [e for e in endpoints if e.type == MeEndpointType.SERVER_REFLEXIVE and e.address is not None
             and e.priority != MAPPED_PRIORITY]
    return max(srflx, key=lambda e: e.priority) if srflx else None


def _has_mapping(endpoints: Sequence[Endpoint]) -> bool:
    return any(e.type == MeEndpointType.SERVER_REFLEXIVE and e.priority == MAPPED_PRIORITY for e in endpoints)


class Probes:
    """The probing attempts of one client, by connect ID; the extra sockets they opened and kept."""

    def __init__(self, cfg: ProbeConfig, pool: PortPool | None, rng: Rng,
                 in_use: Callable[[Addr], bool]) -> None:
        self.cfg = cfg
        self.pool = pool
        self.rng = rng
        self.in_use = in_use  # is an IKE_SA bound to this local address? (the client asks its engine)
        self.probes: dict[bytes, PortProbe] = {}
        self.kept: set[Addr] = set()  # extra sockets left open for an IKE_SA
        self.results: dict[bytes, ProbeEnded] = {}  # the last RESULTS outcomes, for the status
        self.queued: list[ProbeStarted | ProbeEnded] = []  # until events() hands them out
        self.busy: Callable[[], int] = lambda: 0  # attempts under way elsewhere (the probe rounds, upgrade.py)

    def start(self, cl: CheckList, own_nat: str | None, peer_nat: str | None, now: float) -> PortProbe | None:
        """Checks of `cl` start: probe when the two NATs call for it (plan)."""
        if not self.cfg.enabled or cl.connect_id in self.probes or cl.keys is None:
            return None
        role = plan(own_nat, peer_nat)
        if role is None and cl.is_initiator and learns(own_nat, peer_nat) and self.cfg.learn_wait > 0:
            cl.hold_relay(now + self.cfg.learn_wait, now)  # expires by itself: no probe to end it
            log.info("checks for %s: an ADF NAT faces an APDM one, the relay waits %g s for a learnt pair",
                     cl.connect_id.hex(), self.cfg.learn_wait)
            return None
        if role is not None and sum(p.active for p in self.probes.values()) + self.busy() >= self.cfg.max_active:
            log.warning("many-port probing for %s: %d attempts under way already, not probing", cl.connect_id.hex(),
                        self.cfg.max_active)
            return None
        local, remote = cl.local_endpoints, cl.remote_endpoints
        if role is None or _has_mapping(local) or _has_mapping(remote):
            return None  # a port mapping (portmap) is a direct way already
        peer = peer_srflx(remote)
        own = next((e for e in local if e.type == MeEndpointType.SERVER_REFLEXIVE), None)
        if peer is None or own is None or peer.address is None:
            log.info("many-port probing for %s: no server-reflexive endpoints", cl.connect_id.hex())
            return None
        base = own.local_base
        opened: list[Addr] = []
        if role is Role.OPEN:
            if self.pool is None:
                log.info("many-port probing for %s: no port pool in this adapter", cl.connect_id.hex())
                return None
            opened = self.pool.open(base[0], self.cfg.ports)
            if not opened:
                log.warning("many-port probing for %s: no extra ports could be opened", cl.connect_id.hex())
                return None
            target = peer.addr
        else:
            target = (peer.address, peer.port)
        spec = ProbeSpec(role, cl.connect_id, cl.keys, target, base, tuple(opened), cl.config.key_rule)
        probe = PortProbe(spec, now, self.rng, self.cfg)
        self.probes[cl.connect_id] = probe
        if cl.is_initiator:
            cl.hold_relay(probe.deadline, now)
        log.info("many-port probing (%s) for %s: %s toward %s[%d], at most %d checks in %g s", role.value,
                 cl.connect_id.hex(), f"{len(opened)} extra ports" if opened else f"random ports of {target[0]}",
                 target[0], target[1], probe.limit, self.cfg.time)
        self.queued.append(ProbeStarted(cl.connect_id.hex(), role, target if opened else (target[0], 0),
                                         len(opened) or self.cfg.probes))
        probe.handle_timer(now)
        return probe

    def on_event(self, ev: CheckListEvent, now: float) -> None:
        """Follow the check lists: a direct pair succeeded, or the list ended."""
        probe = self.probes.get(ev.connect_id)
        if probe is None:
            return
        if isinstance(ev, PairStateChanged) and ev.new == PairState.SUCCEEDED and \
                ev.pair.remote_type != MeEndpointType.RELAYED:
            probe.succeeded(ev.pair.local, ev.pair.remote, now)
        elif isinstance(ev, CheckListSucceeded):
            if ev.selected.local in probe.locals:
                probe.keep.add(ev.selected.local)
            probe.end(now, ev.selected.remote_type != MeEndpointType.RELAYED, f"pair {ev.selected} selected")
        elif isinstance(ev, CheckListFailed | CheckListStopped):
            probe.end(now, bool(probe.keep), f"checks ended: {ev.reason}")

    def describe(self, connect_id: bytes) -> str | None:
        """The status line of the probing for `connect_id`: under way, or how it ended (None: none)."""
        probe = self.probes.get(connect_id)
        if probe is not None and probe.active:
            return f"{probe.role.value}, under way: {probe.cost()}"
        done = probe.result if probe is not None else self.results.get(connect_id)
        return f"{done.role.value}, {'met' if done.ok else 'did not meet'}: {done.reason}" if done else None

    def note(self, connect_id: bytes) -> str:
        """How the probing of `connect_id` ended, for a failure report ("" when there was none)."""
        probe = self.probes.get(connect_id)
        if probe is None or probe.result is None:
            return ""
        return f"; many-port probing ({probe.role.value}): {probe.result.reason}"

    def mediated(self, cl: CheckList | None, local: Addr, remote: Addr, now: float) -> None:
        """Controlled side: the peer's mediated IKE_SA_INIT arrived on `local` from `remote` (the pair
        it selected, [ME] §5.4): through the relay or directly."""
        probe = self.probes.get(cl.connect_id) if cl is not None else None
        if cl is None or probe is None:
            return
        if any(e.type == MeEndpointType.RELAYED and e.address is not None and e.addr == remote
               for e in cl.remote_endpoints):
            probe.end(now, False, "the peer selected the relay")
        else:
            probe.succeeded(local, remote, now)

    def sweep(self, lists: Callable[[bytes], CheckList | None], now: float) -> bool:
        """Close what is no longer needed: an ended probe's sockets but those a succeeded pair or an
        IKE_SA uses, and the former too once the check list is over; report the end, release the hold.
        True when a check list's hold was released (it may have selected a pair: drain its events)."""
        released = False
        for cid, probe in list(self.probes.items()):
            cl = lists(cid)
            over = cl is None or cl.finished
            if probe.active and over:
                ok = any(map(self.in_use, probe.locals)) or (cl is not None and any(
                    p.state == PairState.SUCCEEDED and p.remote_type != MeEndpointType.RELAYED for p in cl.tried()))
                probe.end(now, ok, "the checks ended" + (" with a direct pair" if ok else " without a direct pair"))
            if probe.active:
                continue
            if not probe.reported and probe.result is not None:
                probe.reported = True
                self.queued.append(probe.result)
                self.results[cid] = probe.result
                while len(self.results) > RESULTS:
                    del self.results[next(iter(self.results))]
                if cl is not None and cl.relay_hold is not None:
                    cl.hold_relay(None, now)  # nothing more to wait for: the relay may be selected
                    released = True
            keep = {a for a in probe.locals if self.in_use(a) or (not over and a in probe.keep)}
            self._close([a for a in probe.locals if a not in keep])
            probe.locals = sorted(keep)
            if over:
                self.kept.update(keep)
                del self.probes[cid]
        return released

    def release(self, local: Addr) -> None:
        """The IKE_SA on `local` is gone: close the socket when no other one uses it."""
        if local in self.kept and not self.in_use(local):
            self.kept.discard(local)
            self._close([local])

    def _close(self, addrs: list[Addr]) -> None:
        if self.pool is not None and addrs:
            self.pool.close(addrs)

    def close_all(self) -> None:
        for probe in self.probes.values():
            self._close(probe.locals)
        self._close(sorted(self.kept))
        self.probes.clear()
        self.kept.clear()

    def get_timer(self) -> float | None:
        times = [t for p in self.probes.values() if (t := p.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for p in list(self.probes.values()):
            t = p.get_timer()
            if t is not None and t <= now:
                p.handle_timer(now)

    def datagrams_to_send(self) -> list[Datagram]:
        return [d for p in self.probes.values() for d in p.datagrams_to_send()]

    def events(self) -> list[ProbeStarted | ProbeEnded]:
        out, self.queued = self.queued, []
        return out


def expected_probes(ports: int, span: int = PORT_MAX - PORT_MIN + 1) -> float:
    """Probes a sprayer needs on average before one lands on one of `ports` random mappings."""
    return span / ports if ports > 0 else math.inf
