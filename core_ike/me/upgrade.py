"""Relay -> direct upgrade of a mediated IKE_SA, and the fall back (sans-IO; our extension, docs/protocol.md §11.16).

A mediated IKE_SA whose selected pair was RELAYED (docs/protocol.md §11.1) keeps the candidates and keys of
its check list. Both peers run a bounded probe round every `period` seconds, counted from when the
IKE_SA came up (so the two rounds start within a round trip of each other and open both NATs' filters
together): a check list with the same connect ID, keys and roles ([ME] §5) over the direct candidates
only, limited to `round_time`. When one of its pairs succeeds, the controlling side (the ME_CONNECT
initiator, [ME] §5.4) moves the IKE_SA and its CHILD_SAs to that pair's remote: the checks proved the
five-tuple both ways before anything moves (make-before-break), and the move is the dynamic address
update of RFC 7296 §2.23 (the peer is behind a NAT from the IKE_SA's point of view, as RFC 4555 §3.5 has
it for MOBIKE): our engine sends a liveness check there and the peer, receiving authenticated IKE or
ESP from the new address, follows. Packets still in flight on the relay are accepted (ESP SAs are found
by SPI, RFC 4303 §2.1), so no packet is lost.

While direct, a watch round every `watch` seconds checks the direct pair and the relayed one (which
keeps the relay's allocation alive and proves the way back). `misses` watch rounds in a row without an
answer on the direct pair move the IKE_SA back to the relay. The controlled side runs the same rounds
(its checks open its NAT, it answers ours) and follows the moves.

Between a random-port APDM NAT and an EIM/APDF one no announced pair works, so a probe round that
only checks the candidates would never find the direct path the first setup's many-port probing can
(core_ike/me/birthday.py, docs/protocol.md §11.17). A probe round therefore probes the same way, with the
same bounds (extra sockets, checks, duration, attempts under way at once, shared with the first setups'),
when both NATs' behaviours carried in ME_CONNECT call for it (birthday.plan): every `probe_every`-th
round of the common schedule, so that both peers probe in the same round. The pair that meets runs from
an extra socket on the random NAT's side: when that side controls, it moves its IKE_SA's local end there
too; when the peer controls, its liveness check arrives on that socket and the engine follows it
(RFC 7296 §2.23 updates both ends). The socket stays open while an IKE_SA uses it or the watch relies on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..codec.message import Message
from ..constants import MeEndpointType
from ..errors import DecodeError, ProtocolError
from ..ike.engine import Engine
from .birthday import PortProbe, ProbeEnded, Probes, ProbeSpec, ProbeStarted, Role, peer_srflx, plan
from .checklist import CheckList, CheckListConfig, Datagram, PairState, PairStateChanged
from .checks import Check, KeyRule, decode_check
from .endpoints import MAPPED_PRIORITY, Addr, Endpoint, make_endpoint

log = logging.getLogger("core_ike.me")


@dataclass(frozen=True)
class UpgradeConfig:
    period: float = 30.0  # a probe round this often while relayed (0: no upgrade)
    round_time: float = 3.0  # each round's checks end after this long
    max_rounds: int = 0  # probe rounds per relayed stretch (0: no limit; each round is bounded)
    watch: float = 5.0  # while direct: a watch round this often
    misses: int = 2  # watch rounds in a row without an answer on the direct pair -> back to the relay
    # many-port probing (birthday.py) joins the probe rounds 1, 1 + probe_every, ... of the common
    # schedule, where both NATs call for it (0: never): one attempt costs up to 2048 checks in 5 s
    probe_every: int = 4


@dataclass(frozen=True)
class Candidates:
    """What a mediated IKE_SA keeps of its check list: roles, keys and both sides' endpoints."""

    connect_id: bytes
    initiator: bool
    own_key: bytes
    peer_key: bytes
    local: tuple[Endpoint, ...]
    remote: tuple[Endpoint, ...]
    peer_nat: str | None = None  # the peer's NAT behaviour from its ME_CONNECT (birthday.py)

    @classmethod
    def of(cls, cl: CheckList, peer_nat: str | None = None) -> Candidates | None:
        keys = cl.keys
        if keys is None:
            return None
        return cls(cl.connect_id, cl.is_initiator, keys[0], keys[1], tuple(cl.local_endpoints),
                   tuple(cl.remote_endpoints), peer_nat)

    def relay(self, remote: Addr) -> bool:
        return any(e.type == MeEndpointType.RELAYED and e.address is not None and e.addr == remote
                   for e in self.remote)


@dataclass
class PathLink:
    """Per-IKE_SA state: the connect ID of the watch that follows this IKE_SA. A rekeyed IKE_SA
    continues it (RFC 7296 §2.18), so the watch moves on to the successor."""

    connect_id: bytes = b""

    def for_successor(self) -> PathLink:
        return PathLink(self.connect_id)


@dataclass(frozen=True)
class PathChanged:
    """A mediated IKE_SA moved between the relay and a direct pair (event of our extension)."""

    ike_unique_id: int
    remote: Addr
    direct: bool
    reason: str
    local: Addr | None = None  # the local end the IKE_SA moves to (None: it stays)


class RoundProbing:
    """Many-port probing for the probe rounds of one client: the first setups' `Probes` lends its
    bounds, port pool and randomness, and the two count each other's attempts against `max_active`."""

    def __init__(self, probes: Probes, own_nat: Callable[[], str | None] | None,
                 watches: dict[int, PathWatch]) -> None:
        self.probes = probes
        self.own_nat = own_nat
        self.watches = watches
        self.events: list[ProbeStarted | ProbeEnded] = []
        probes.busy = self.active

    def active(self) -> int:
        """Attempts of the probe rounds under way."""
        return sum(1 for w in self.watches.values() if w.probe is not None and w.probe.active)

    def role(self, c: Candidates) -> Role | None:
        if not self.probes.cfg.enabled or self.own_nat is None:
            return None
        mapped = any(e.type == MeEndpointType.SERVER_REFLEXIVE and e.priority == MAPPED_PRIORITY
                     for e in (*c.local, *c.remote))
        return None if mapped else plan(self.own_nat(), c.peer_nat)  # a port mapping is a direct way already

    def start(self, c: Candidates, role: Role, key_rule: KeyRule, now: float) -> PortProbe | None:
        cfg, cid = self.probes.cfg, c.connect_id.hex()
        if sum(p.active for p in self.probes.probes.values()) + self.active() >= cfg.max_active:
            log.warning("probe round for %s: %d many-port attempts under way already, not probing", cid,
                        cfg.max_active)
            return None
        peer = peer_srflx(c.remote)
        own = next((e for e in c.local if e.type == MeEndpointType.SERVER_REFLEXIVE), None)
        if peer is None or own is None or peer.address is None:
            return None
        opened: list[Addr] = []
        if role is Role.OPEN:
            pool = self.probes.pool
            opened = pool.open(own.local_base[0], cfg.ports) if pool is not None else []
            if not opened:
                log.warning("probe round for %s: no extra ports could be opened", cid)
                return None
            target = peer.addr
        else:
            target = (peer.address, peer.port)
        spec = ProbeSpec(role, c.connect_id, (c.own_key, c.peer_key), target, own.local_base, tuple(opened), key_rule)
        probe = PortProbe(spec, now, self.probes.rng, cfg)
        log.info("probe round for %s: many-port probing (%s) toward %s[%d], at most %d checks in %g s", cid,
                 role.value, target[0], target[1], probe.limit, cfg.time)
        self.events.append(ProbeStarted(cid, role, target if opened else (target[0], 0),
                                        len(opened) or cfg.probes))
        probe.handle_timer(now)
        return probe

    def close(self, addrs: Sequence[Addr]) -> None:
        if addrs and self.probes.pool is not None:
            self.probes.pool.close(addrs)

    def in_use(self, local: Addr) -> bool:
        return self.probes.in_use(local)


@dataclass
class PathWatch:
    """One mediated IKE_SA that came up relayed: its rounds, its path, its moves."""

    uid: int
    cands: Candidates
    relay: Addr
    started: float
    cfg: UpgradeConfig
    checks: CheckListConfig
    direct: Endpoint | None = None
    rounds: int = 0  # probe rounds since the IKE_SA last went (or came up) relayed
    misses: int = 0
    current: CheckList | None = None
    round_end: float | None = None
    next_round: float = 0.0
    heard_direct: bool = False  # the direct pair answered in this watch round
    moves: list[PathChanged] = field(default_factory=list)
    prober: RoundProbing | None = None
    probe: PortProbe | None = None  # this round's many-port probing
    direct_local: Addr | None = None  # our end of the direct pair (an extra socket after probing)
    relay_local: Addr | None = None  # the IKE_SA's local end on the relay, before it moved
    sockets: set[Addr] = field(default_factory=set)  # extra sockets kept for the direct pair
    last_probe: ProbeEnded | None = None  # how the last round's many-port probing ended (the status)

    def __post_init__(self) -> None:
        self.next_round = self.started + self.cfg.period

    def get_timer(self) -> float | None:
        times = [self.next_round] if self.round_end is None and self._may_start() else []
        if self.round_end is not None:
            times.append(self.round_end)
        if self.current is not None and (t := self.current.get_timer()) is not None:
            times.append(t)
        if self.probe is not None and (t := self.probe.get_timer()) is not None:
            times.append(t)
        return min(times) if times else None

    def _may_start(self) -> bool:
        return self.direct is not None or self.cfg.max_rounds <= 0 or self.rounds < self.cfg.max_rounds

    def handle_timer(self, now: float) -> None:
        if self.current is not None and (t := self.current.get_timer()) is not None and t <= now:
            self.current.handle_timer(now)
        if self.probe is not None and (t := self.probe.get_timer()) is not None and t <= now:
            self.probe.handle_timer(now)
        self._drain(now)
        if self.round_end is not None and now >= self.round_end:
            self._end_round(now)
        if self.round_end is None and self._may_start() and now >= self.next_round:
            self._start_round(now)
        self._settle(now)

    def _start_round(self, now: float) -> None:
        c = self.cands
        local = [e for e in c.local if e.type != MeEndpointType.RELAYED]
        role: Role | None = None
        if self.direct is None:
            remote = [e for e in c.remote if e.type != MeEndpointType.RELAYED]
            index = round((self.next_round - self.started) / self.cfg.period)  # 1, 2, ... on both peers
            self.rounds += 1
            # on the common schedule from when the IKE_SA came up (both peers' rounds coincide), also
            # after a stretch on the direct pair, and never a round that is due already
            index = max(index, int((now - self.started) / self.cfg.period))
            self.next_round = self.started + self.cfg.period * (index + 1)
            if self.prober is not None and self.cfg.probe_every > 0 and (index - 1) % self.cfg.probe_every == 0:
                role = self.prober.role(c)
        else:
            remote = [self.direct, *[e for e in c.remote if e.type == MeEndpointType.RELAYED]]
            self.next_round = now + self.cfg.watch
            if self.direct_local is not None and all(e.local_base != self.direct_local for e in local):
                local.insert(0, make_endpoint(MeEndpointType.HOST, *self.direct_local))  # an extra socket
        length = self.cfg.round_time
        if role is not None and self.prober is not None:
            # the checks a late probe triggers (RFC 8445 §7.3.1.4) are answered until the round ends
            length = max(length, self.prober.probes.cfg.time + 1.0)
        cfg = replace(self.checks, transaction_timeout=length, responder_timeout=length)
        if c.initiator:
            cl = CheckList.for_initiator(c.connect_id, c.own_key, local, now, cfg)
            cl.set_responder_data(c.peer_key, remote, now)
        else:
            cl = CheckList.for_responder(c.connect_id, c.peer_key, remote, now, cfg)
            cl.set_responder_data(c.own_key, local, now)
        self.current, self.round_end, self.heard_direct = cl, now + length, False
        if role is not None and self.prober is not None:
            self.probe = self.prober.start(c, role, cfg.key_rule, now)
        self._drain(now)

    def _settle(self, now: float) -> None:
        """An ended probing attempt: report it, close its sockets but the one a direct pair uses."""
        probe, prober = self.probe, self.prober
        if probe is None or prober is None or probe.active:
            return
        self.probe = None
        if probe.result is not None:
            prober.events.append(probe.result)
            self.last_probe = probe.result
        self.sockets.update(probe.keep)
        prober.close([a for a in probe.locals if a not in probe.keep])

    def sweep(self) -> None:
        """Close the kept extra sockets that neither an IKE_SA nor the direct pair uses any more."""
        if self.prober is None or not self.sockets:
            return
        done = [a for a in self.sockets if a != self.direct_local and not self.prober.in_use(a)]
        self.sockets.difference_update(done)
        self.prober.close(done)

    def close(self, now: float) -> None:
        """The watch ends: every extra socket it holds that no IKE_SA uses closes."""
        if self.probe is not None:
            self.probe.end(now, False, "the IKE_SA is gone")
            self._settle(now)
        self.direct_local = None
        self.sweep()

    def _end_round(self, now: float) -> None:
        self.round_end = None
        if self.probe is not None:
            self.probe.end(now, False, "the probe round ended")
        if self.direct is None:
            return
        if self.heard_direct:
            self.misses = 0
            return
        self.misses += 1
        log.info("mediated IKE_SA %d: no answer on the direct pair to %s[%d] (%d of %d)", self.uid,
                 *self.direct.addr, self.misses, self.cfg.misses)
        if self.misses >= self.cfg.misses:
            self.direct, self.direct_local, self.misses, self.rounds = None, None, 0, 0
            self.next_round = self.started + self.cfg.period * (int((now - self.started) / self.cfg.period) + 1)
            if self.cands.initiator:
                self.moves.append(PathChanged(self.uid, self.relay, False, "the direct pair stopped answering",
                                              self.relay_local))

    def _drain(self, now: float) -> None:
        cl = self.current
        while cl is not None and (ev := cl.next_event()) is not None:
            if not isinstance(ev, PairStateChanged) or ev.new != PairState.SUCCEEDED:
                continue
            p = ev.pair
            if p.remote_type == MeEndpointType.RELAYED:
                continue
            if self.direct is not None:
                self.heard_direct = self.heard_direct or p.remote == self.direct.addr
                continue
            ep = next((e for e in self.cands.remote if e.address is not None and e.addr == p.remote), None)
            if ep is None:  # a peer-reflexive remote learnt in this round (RFC 8445 7.3.1.3)
                ep = make_endpoint(MeEndpointType.PEER_REFLEXIVE, p.remote[0], p.remote[1])
            self.direct, self.direct_local, self.misses, self.heard_direct = ep, p.local, 0, True
            self.next_round = now + self.cfg.watch
            if self.probe is not None:
                self.probe.succeeded(p.local, p.remote, now)
            log.info("mediated IKE_SA %d: direct pair %s works", self.uid, p)
            if self.cands.initiator:
                self.moves.append(PathChanged(self.uid, p.remote, True, f"check on pair {p} succeeded", p.local))

    def receive(self, check: Check, src: Addr, dst: Addr, now: float) -> None:
        if self.current is not None:
            self.current.receive_check(check, src, dst, now)
            self._drain(now)
            self._settle(now)

    def datagrams(self) -> list[Datagram]:
        out = self.current.datagrams_to_send() if self.current is not None else []
        return out + self.probe.datagrams_to_send() if self.probe is not None else out


class Paths:
    """The PathWatches of one client, keyed by IKE_SA unique id and by connect ID."""

    def __init__(self, cfg: UpgradeConfig, checks: CheckListConfig) -> None:
        self.cfg = cfg
        self.checks = checks
        self._cands: dict[int, Candidates] = {}  # mediated IKE_SAs not up yet
        self.watches: dict[int, PathWatch] = {}
        self.prober: RoundProbing | None = None
        self._now = 0.0  # the last time the client gave us (for a watch that ends between timers)

    def busy(self) -> bool:
        """Anything for `apply_moves`: a watch, or probe-round events not handed out yet (a watch that ended
        may have left some)."""
        return bool(self.watches) or (self.prober is not None and bool(self.prober.events))

    def use_probing(self, probes: Probes, own_nat: Callable[[], str | None] | None) -> None:
        """Probe rounds may probe many ports as the first setups do (`probes`: their bounds, pool, rng;
        `own_nat`: our NAT's behaviour, RFC 5780 discovery)."""
        self.prober = RoundProbing(probes, own_nat, self.watches)

    def track(self, uid: int, cl: CheckList | None, peer_nat: str | None = None) -> None:
        """A mediated IKE_SA was started (or answered) on the result of check list `cl`; `peer_nat`: the
        peer's NAT behaviour its ME_CONNECT carried."""
        if self.cfg.period > 0 and cl is not None and (c := Candidates.of(cl, peer_nat)) is not None:
            self._cands[uid] = c

    def established(self, uid: int, remote: Addr, now: float) -> bool:
        """The IKE_SA is up: watched when it runs through the relay. True when it does."""
        c = self._cands.pop(uid, None)
        if c is None or not c.relay(remote):
            return False
        if any(e.type != MeEndpointType.RELAYED for e in c.remote):
            self.watches[uid] = PathWatch(uid, c, remote, now, self.cfg, self.checks, prober=self.prober)
            log.info("mediated IKE_SA %d is relayed: a direct pair is probed every %g s", uid, self.cfg.period)
        return True

    def destroyed(self, uid: int, successor: int | None = None) -> None:
        """The IKE_SA is gone; `successor`: the IKE_SA that rekeyed it (RFC 7296 §2.18) takes its watch."""
        self._cands.pop(uid, None)
        w = self.watches.pop(uid, None)
        if w is not None and successor is not None:
            w.uid = successor
            w.moves = [replace(m, ike_unique_id=successor) for m in w.moves]
            self.watches[successor] = w
            log.info("mediated IKE_SA %d rekeyed as %d: its path watch goes on", uid, successor)
        elif w is not None:
            w.close(self._now)

    def describe(self, uid: int | None) -> str | None:
        w = self.watches.get(uid) if uid is not None else None
        if w is None:
            return None
        last = w.last_probe
        if w.direct is not None:
            how = f", many-port probing ({last.role.value}) met" if last is not None and last.ok else ""
            return f"direct to {w.direct.addr[0]}[{w.direct.addr[1]}] (moved off the relay{how})"
        if w.probe is not None:
            probing = f", many-port probing ({w.probe.role.value}) under way"
        elif last is not None:
            probing = f", the last many-port probing ({last.role.value}) did not meet"
        else:
            probing = ""
        return (f"relayed through {w.relay[0]}[{w.relay[1]}], {w.rounds} probe rounds for a direct pair "
                f"(every {w.cfg.period:g} s){probing}")

    def receive(self, check: Check, src: Addr, dst: Addr, now: float) -> bool:
        self._now = now
        hit = [w for w in self.watches.values() if w.cands.connect_id == check.connect_id]
        for w in hit:
            w.receive(check, src, dst, now)
        return bool(hit)

    def get_timer(self) -> float | None:
        times = [t for w in self.watches.values() if (t := w.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        for w in list(self.watches.values()):
            t = w.get_timer()
            if t is not None and t <= now:
                w.handle_timer(now)

    def datagrams_to_send(self) -> list[Datagram]:
        return [d for w in self.watches.values() for d in w.datagrams()]

    def moves(self) -> Sequence[PathChanged]:
        out = [m for w in self.watches.values() for m in w.moves]
        for w in self.watches.values():
            w.moves = []
        return out

    def receive_message(self, msg: Message, src: Addr, dst: Addr, now: float) -> bool:
        """A connectivity check ([ME] §5) for one of the watches: True when it took it."""
        try:
            check = decode_check(msg)
        except (DecodeError, ProtocolError):
            return False
        return self.receive(check, src, dst, now)

    def apply_moves(self, engine: Engine, now: float) -> None:
        """Move the IKE_SAs (RFC 7296 §2.23 update, verified by a liveness check there) and report it;
        hand out the probe rounds' many-port events and close the extra sockets no longer used."""
        self._now = now
        for move in self.moves():
            log.info("mediated IKE_SA %d moves to %s[%d]: %s", move.ike_unique_id, *move.remote, move.reason)
            sa = engine.by_uid.get(move.ike_unique_id)
            w = self.watches.get(move.ike_unique_id)
            old = sa.local if sa is not None else None
            if sa is not None and w is not None and move.direct and sa.remote == w.relay:
                w.relay_local = sa.local
            if sa is not None and move.local is not None and sa.established:
                # the pair's local end (an extra socket of many-port probing): IKE and ESP leave from it,
                # as the peer's filter (RFC 4787 §5) lets in only what comes from there
                sa.local = move.local
            engine.peer_mapping(move.ike_unique_id, move.remote, now)
            if sa is None or sa.remote != move.remote:  # no NAT toward the peer: RFC 7296 §2.23 has no update
                if sa is not None and old is not None:
                    sa.local = old
                log.warning("mediated IKE_SA %d did not move to %s[%d]", move.ike_unique_id, *move.remote)
                continue
            engine.emit(move)
        if self.prober is not None:
            for pev in self.prober.events:
                engine.emit(pev)
            self.prober.events = []
            for w in self.watches.values():
                w.sweep()
