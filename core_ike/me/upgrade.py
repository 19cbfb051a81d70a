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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..codec.message import Message
from ..constants import MeEndpointType
from ..errors import DecodeError, ProtocolError
from ..ike.engine import Engine
from .checklist import CheckList, CheckListConfig, Datagram, PairState, PairStateChanged
from .checks import Check, decode_check
from .endpoints import Addr, Endpoint, make_endpoint

log = logging.getLogger("core_ike.me")


@dataclass(frozen=True)
class UpgradeConfig:
    period: float = 30.0  # a probe round this often while relayed (0: no upgrade)
    round_time: float = 3.0  # each round's checks end after this long
    max_rounds: int = 0  # probe rounds per relayed stretch (0: no limit; each round is bounded)
    watch: float = 5.0  # while direct: a watch round this often
    misses: int = 2  # watch rounds in a row without an answer on the direct pair -> back to the relay


@dataclass(frozen=True)
class Candidates:
    """What a mediated IKE_SA keeps of its check list: roles, keys and both sides' endpoints."""

    connect_id: bytes
    initiator: bool
    own_key: bytes
    peer_key: bytes
    local: tuple[Endpoint, ...]
    remote: tuple[Endpoint, ...]

    @classmethod
    def of(cls, cl: CheckList) -> Candidates | None:
        keys = cl.keys
        if keys is None:
            return None
        return cls(cl.connect_id, cl.is_initiator, keys[0], keys[1], tuple(cl.local_endpoints),
                   tuple(cl.remote_endpoints))

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

    def __post_init__(self) -> None:
        self.next_round = self.started + self.cfg.period

    def get_timer(self) -> float | None:
        times = [self.next_round] if self.round_end is None and self._may_start() else []
        if self.round_end is not None:
            times.append(self.round_end)
        if self.current is not None and (t := self.current.get_timer()) is not None:
            times.append(t)
        return min(times) if times else None

    def _may_start(self) -> bool:
        return self.direct is not None or self.cfg.max_rounds <= 0 or self.rounds < self.cfg.max_rounds

    def handle_timer(self, now: float) -> None:
        if self.current is not None and (t := self.current.get_timer()) is not None and t <= now:
            self.current.handle_timer(now)
        self._drain(now)
        if self.round_end is not None and now >= self.round_end:
            self._end_round(now)
        if self.round_end is None and self._may_start() and now >= self.next_round:
            self._start_round(now)

    def _start_round(self, now: float) -> None:
        c = self.cands
        if self.direct is None:
            remote = [e for e in c.remote if e.type != MeEndpointType.RELAYED]
            self.rounds += 1
            # on the common schedule from when the IKE_SA came up (both peers' rounds coincide)
            self.next_round = self.started + self.cfg.period * (self.rounds + 1)
        else:
            remote = [self.direct, *[e for e in c.remote if e.type == MeEndpointType.RELAYED]]
            self.next_round = now + self.cfg.watch
        local = [e for e in c.local if e.type != MeEndpointType.RELAYED]
        cfg = replace(self.checks, transaction_timeout=self.cfg.round_time, responder_timeout=self.cfg.round_time)
        if c.initiator:
            cl = CheckList.for_initiator(c.connect_id, c.own_key, local, now, cfg)
            cl.set_responder_data(c.peer_key, remote, now)
        else:
            cl = CheckList.for_responder(c.connect_id, c.peer_key, remote, now, cfg)
            cl.set_responder_data(c.own_key, local, now)
        self.current, self.round_end, self.heard_direct = cl, now + self.cfg.round_time, False
        self._drain(now)

    def _end_round(self, now: float) -> None:
        self.round_end = None
        if self.direct is None:
            return
        if self.heard_direct:
            self.misses = 0
            return
        self.misses += 1
        log.info("mediated IKE_SA %d: no answer on the direct pair to %s[%d] (%d of %d)", self.uid,
                 *self.direct.addr, self.misses, self.cfg.misses)
        if self.misses >= self.cfg.misses:
            self.direct, self.misses, self.rounds = None, 0, 0
            self.next_round = self.started + self.cfg.period * (int((now - self.started) / self.cfg.period) + 1)
            if self.cands.initiator:
                self.moves.append(PathChanged(self.uid, self.relay, False, "the direct pair stopped answering"))

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
            self.direct, self.misses, self.heard_direct = ep, 0, True
            self.next_round = now + self.cfg.watch
            log.info("mediated IKE_SA %d: direct pair %s works", self.uid, p)
            if self.cands.initiator:
                self.moves.append(PathChanged(self.uid, p.remote, True, f"check on pair {p} succeeded"))

    def receive(self, check: Check, src: Addr, dst: Addr, now: float) -> None:
        if self.current is not None:
            self.current.receive_check(check, src, dst, now)
            self._drain(now)

    def datagrams(self) -> list[Datagram]:
        return self.current.datagrams_to_send() if self.current is not None else []


class Paths:
    """The PathWatches of one client, keyed by IKE_SA unique id and by connect ID."""

    def __init__(self, cfg: UpgradeConfig, checks: CheckListConfig) -> None:
        self.cfg = cfg
        self.checks = checks
        self._cands: dict[int, Candidates] = {}  # mediated IKE_SAs not up yet
        self.watches: dict[int, PathWatch] = {}

    def track(self, uid: int, cl: CheckList | None) -> None:
        """A mediated IKE_SA was started (or answered) on the result of check list `cl`."""
        if self.cfg.period > 0 and cl is not None and (c := Candidates.of(cl)) is not None:
            self._cands[uid] = c

    def established(self, uid: int, remote: Addr, now: float) -> bool:
        """The IKE_SA is up: watched when it runs through the relay. True when it does."""
        c = self._cands.pop(uid, None)
        if c is None or not c.relay(remote):
            return False
        if any(e.type != MeEndpointType.RELAYED for e in c.remote):
            self.watches[uid] = PathWatch(uid, c, remote, now, self.cfg, self.checks)
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

    def describe(self, uid: int | None) -> str | None:
        w = self.watches.get(uid) if uid is not None else None
        if w is None:
            return None
        if w.direct is not None:
            return f"direct to {w.direct.addr[0]}[{w.direct.addr[1]}] (moved off the relay)"
        return (f"relayed through {w.relay[0]}[{w.relay[1]}], {w.rounds} probe rounds for a direct pair "
                f"(every {w.cfg.period:g} s)")

    def receive(self, check: Check, src: Addr, dst: Addr, now: float) -> bool:
        hit = [w for w in self.watches.values() if w.cands.connect_id == check.connect_id]
        for w in hit:
            w.receive(check, src, dst, now)
        return bool(hit)

    def get_timer(self) -> float | None:
        times = [t for w in self.watches.values() if (t := w.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
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
        """Move the IKE_SAs (RFC 7296 §2.23 update, verified by a liveness check there) and report it."""
        for move in self.moves():
            log.info("mediated IKE_SA %d moves to %s[%d]: %s", move.ike_unique_id, *move.remote, move.reason)
            engine.peer_mapping(move.ike_unique_id, move.remote, now)
            sa = engine.by_uid.get(move.ike_unique_id)
            if sa is None or sa.remote != move.remote:  # no NAT toward the peer: RFC 7296 §2.23 has no update
                log.warning("mediated IKE_SA %d did not move to %s[%d]", move.ike_unique_id, *move.remote)
                continue
            engine.emit(move)
