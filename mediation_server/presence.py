"""Presence of the portal's peers, written to med_db for the server manager (which may run on another
host and reads only the database): online/offline, last seen, public endpoint, the NAT behaviour the
peer reported, its current mediations with their path, and the server's totals (schema.sql
``peer_presence``, ``server_state``).

Write-behind: the engine's events (on the event loop) only update the state in memory and mark the
peers they touch; `run()` collects the marked peers' rows on the loop (cost per marked peer) and
writes them in a worker thread, one transaction per batch. Events that arrive while a write is under
way coalesce into the next batch, so a burst of changes costs one write per peer, not one per event.
The totals row is rewritten with every batch and at least every `heartbeat` seconds: a portal seeing
it stand still knows the server stopped reporting.

A mediation ("current mediated connection") starts when the server relays the ME_CONNECT response
(docs/protocol.md §4: both peers then run their checks) and ends when either peer goes offline here, or
when it went through the data relay and the relay was freed (idle: docs/protocol.md §11.1). Its path is
"relayed" once the relay between the two forwarded IKE or ESP traffic (datarelay.py "in use"), else
"direct": the server cannot see a direct pair's traffic, so "direct" means "not through this server".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core_ike.me import events as mev
from med_db.presence import Mediation, PresenceRow, Totals, server_started, write_presence, write_totals

from .datarelay import DataRelay
from .db import PortalPeers

log = logging.getLogger("mediation_server.presence")

NAT_WAIT = 60.0  # seconds after coming online during which a peer's NAT report is looked for


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _endpoint(addr: tuple[str, int]) -> str:
    return f"{addr[0]}[{addr[1]}]"


@dataclass
class _Online:
    endpoint: str
    since: float
    nat: str | None = None


@dataclass
class _Mediation:
    since: float
    relay_id: int | None = None
    relayed: bool = False


@dataclass
class _Counters:
    mediations: int = 0
    relays_total: int = 0
    relays: dict[int, frozenset[str]] = field(default_factory=dict)  # active relay id -> its two peers


class PresenceWriter:
    def __init__(self, sessions: sessionmaker[Session], peers: PortalPeers, *, server: str = "mediation",
                 relay: DataRelay | None = None,
                 nat_of: Callable[[str], str | None] = lambda identity: None,
                 wall: Callable[[], float] = time.time, tick: float = 1.0, heartbeat: float = 5.0) -> None:
        """`server`: this server's name in the rows (servers of a cluster share the database);
        `nat_of(identity)`: the NAT behaviour the online peer reported (None: not reported);
        `wall`: wall-clock seconds (the rows hold UTC times)."""
        self.sessions = sessions
        self.server = server
        self.peers = peers
        self.relay = relay
        self.nat_of = nat_of
        self.wall = wall
        self.tick = tick
        self.heartbeat = heartbeat
        self._online: dict[str, _Online] = {}
        self._offline_at: dict[str, float] = {}  # went offline, row not written yet
        self._nat_pending: dict[str, float] = {}  # online without a NAT report yet -> since when
        self._mediations: dict[frozenset[str], _Mediation] = {}
        self._by_peer: dict[str, set[frozenset[str]]] = {}
        self._count = _Counters()
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._written = 0.0  # wall time of the last totals write
        self._last_totals: Totals | None = None  # the totals last written
        self.writes = 0  # batches written (for tests and stats)

    # ------------------------------------------------------------------ events (event loop, no SQL)
    def on_event(self, e: object) -> None:
        now = self.wall()
        if isinstance(e, mev.PeerOnline):
            self._peer_online(e, now)
        elif isinstance(e, mev.PeerOffline):
            self._peer_offline(e, now)
        elif isinstance(e, mev.ConnectRelayed) and e.response:
            self._mediated(e, now)
        elif isinstance(e, mev.RelayAllocated):
            self._count.relays[e.relay_id] = frozenset((e.a, e.b))
            self._count.relays_total += 1
            self._mark_totals()
        elif isinstance(e, mev.RelayFreed):
            self._relay_freed(e)

    def _peer_online(self, e: mev.PeerOnline, now: float) -> None:
        old = self._online.get(e.identity)
        since = old.since if old is not None and e.replaced is not None else now
        self._online[e.identity] = _Online(_endpoint(e.endpoint), since, old.nat if old else None)
        self._offline_at.pop(e.identity, None)
        if old is None or old.nat is None:
            self._nat_pending[e.identity] = now
        self._mark(e.identity)

    def _peer_offline(self, e: mev.PeerOffline, now: float) -> None:
        if self._online.pop(e.identity, None) is not None:
            self._offline_at[e.identity] = now
            self._nat_pending.pop(e.identity, None)
            for pair in list(self._by_peer.get(e.identity, ())):
                self._end(pair)
            self._mark(e.identity)

    def _mediated(self, e: mev.ConnectRelayed, now: float) -> None:
        """The server relayed a ME_CONNECT response: a mediation between two online peers."""
        pair = frozenset((e.requester, e.target))
        if len(pair) == 2 and all(p in self._online for p in pair):
            relay_id = next((i for i, p in self._count.relays.items() if p == pair), None)
            prev = self._mediations.get(pair)
            relayed = prev is not None and prev.relay_id == relay_id and prev.relayed
            self._mediations[pair] = _Mediation(now, relay_id, relayed)
            for p in pair:
                self._by_peer.setdefault(p, set()).add(pair)
                self._mark(p)
            self._count.mediations += 1
            self._mark_totals()

    def _relay_freed(self, e: mev.RelayFreed) -> None:
        freed = self._count.relays.pop(e.relay_id, None)
        med = self._mediations.get(freed) if freed is not None else None
        if freed is not None and med is not None and med.relay_id == e.relay_id:
            if med.relayed:  # the tunnel through it has been idle for the relay's timeout: gone
                self._end(freed)
            else:
                med.relay_id = None
        self._mark_totals()

    def _end(self, pair: frozenset[str]) -> None:
        if self._mediations.pop(pair, None) is None:
            return
        for p in pair:
            s = self._by_peer.get(p)
            if s is not None:
                s.discard(pair)
                if not s:
                    del self._by_peer[p]
            self._mark(p)

    def _mark(self, identity: str) -> None:
        self._dirty.add(identity)
        if self._wake is not None:
            self._wake.set()

    def _mark_totals(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _poll(self, now: float) -> None:
        """Once per tick: relays that started carrying a tunnel, NAT reports that arrived (the cost is
        bounded by the active relays and the peers that came online within NAT_WAIT without one)."""
        if self.relay is not None:
            for r in self.relay:
                pair = frozenset((r.a.identity, r.b.identity))
                med = self._mediations.get(pair)
                if r.in_use and med is not None and med.relay_id == r.id and not med.relayed:
                    med.relayed = True
                    for p in pair:
                        self._mark(p)
        for identity, since in list(self._nat_pending.items()):
            o = self._online.get(identity)
            nat = self.nat_of(identity) if o is not None else None
            if o is not None and nat:
                o.nat = nat
                self._mark(identity)
            if o is None or nat or now - since > NAT_WAIT:
                del self._nat_pending[identity]

    # ------------------------------------------------------------------ rows
    def _row(self, identity: str, now: float) -> PresenceRow | None:
        peer = self.peers.known(identity)
        if peer is None:
            return None  # not a portal peer (a PSK pseudonym of the config file): nothing to show
        o = self._online.get(identity)
        if o is None:
            return PresenceRow(peer.id, False, None, None, None, _utc(self._offline_at.pop(identity, now)))
        conns = []
        for pair in sorted(self._by_peer.get(identity, ()), key=sorted):
            other = next(iter(pair - {identity}))
            other_peer = self.peers.known(other)
            if other_peer is None:
                continue
            med = self._mediations[pair]
            conns.append(Mediation(other_peer.keyid, "relayed" if med.relayed else "direct", _utc(med.since)))
        return PresenceRow(peer.id, True, o.endpoint, o.nat, _utc(o.since), _utc(now), tuple(conns))

    def _totals(self) -> Totals:
        return Totals(len(self._online), self._count.mediations, len(self._count.relays), self._count.relays_total)

    def collect(self) -> tuple[list[PresenceRow], Totals]:
        """The rows of the peers changed since the last collect (event loop; cost per changed peer)."""
        now = self.wall()
        self._poll(now)
        dirty, self._dirty = self._dirty, set()
        rows = [r for r in (self._row(i, now) for i in sorted(dirty)) if r is not None]
        return rows, self._totals()

    # ------------------------------------------------------------------ the database side (worker thread)
    def start(self) -> None:
        """Before the engine runs (blocking SQL): every row still online is stale."""
        with self.sessions.begin() as s:
            n = server_started(s, self.server, _utc(self.wall()))
        self._written = self.wall()
        if n:
            log.info("marked %d peer(s) offline that a previous run left online", n)

    def write(self, rows: list[PresenceRow], totals: Totals) -> None:
        with self.sessions.begin() as s:
            write_presence(s, self.server, rows)
            write_totals(s, self.server, totals, _utc(self.wall()))
        self.writes += 1

    def flush(self, stopping: bool = True) -> None:
        """Write what is pending now (blocking: at shutdown, after the event loop); a server that stops
        has nobody online."""
        if stopping:
            for identity in list(self._online):
                self.on_event(mev.PeerOffline(identity, 0))
        rows, totals = self.collect()
        try:
            self.write(rows, totals)
        except SQLAlchemyError as e:
            log.warning("writing the presence of %d peer(s) failed: %s", len(rows), e)

    async def run(self) -> None:
        """Write the changes in batches, off the event loop."""
        self._wake = asyncio.Event()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.tick)
                self._wake.clear()
                rows, totals = self.collect()
                if not rows and self.wall() - self._written < self.heartbeat and totals == self._last_totals:
                    continue
                try:
                    await asyncio.to_thread(self.write, rows, totals)
                except SQLAlchemyError as e:
                    log.warning("writing the presence of %d peer(s) failed: %s", len(rows), e)
                    self._dirty.update(self._identity_of(r.peer_id) for r in rows)
                    self._dirty.discard("")
                    continue
                self._written = self.wall()
                self._last_totals = totals
        finally:
            self._wake = None

    def _identity_of(self, peer_id: int) -> str:
        for identity in list(self._online) + list(self._offline_at):
            p = self.peers.known(identity)
            if p is not None and p.id == peer_id:
                return identity
        return ""
