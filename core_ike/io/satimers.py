"""Lifetimes (RFC 7296 2.8, RFC 4303 3.3.3) and NAT keepalives (RFC 3948 2.3) of the userspace data
plane's SAs, driven by their deadlines so that a tick costs what is due, not what is held.

- Time limits and keepalives are deadlines in one heap: each SA has at most one lifetime entry (its
  next soft or hard time limit) and one keepalive entry (when it will have been idle for the keepalive
  interval). A tick pops the entries due; an SA deleted meanwhile leaves its entries behind as stale,
  skipped when they come up and swept out when they outnumber the live ones.
- Byte and packet limits, and the outbound sequence number's margin, are compared where the counters
  change (`SaTimers._sent` after a seal, the data plane's `_check_mapping` after an open) against the
  SA's next mark; an SA past its mark waits for the next tick, which decides as before.
- A keepalive entry that finds traffic since it was set moves to the traffic's time plus the interval,
  so a busy SA costs one look per interval, an idle one one keepalive per interval.
- An SA that has sent nothing yet has its first keepalive at the next point of its peer's phase: a
  fraction of the interval fixed by the peer's address and port (RFC 3948 §4 sets only the interval).
  SAs installed together (a gateway's restart, a burst of peers) spread their keepalives over the
  interval instead of all falling due in one tick, and the SAs to one peer share its phase, so one
  keepalive a tick still serves them all.
- A call looks at no more than `tick_budget` heap entries; with more due it says so, and the data
  plane calls again at the event loop's next turn, after the IKE messages waiting there.

`SaTimers` is a base class of `core_ike.io.userspace.UserspaceDataPlane`, whose state it uses.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constants import NAT_KEEPALIVE
from ..esp import EspSa
from .acquire import AcquireLimiter
from .dataplane import DataPlaneEvent, Direction, SaExpired, SaParams, SendDatagram

log = logging.getLogger("core_ike.io.userspace")

NEVER = 1 << 80  # a mark no counter reaches: the SA has no such limit (left)
_LIFETIME, _KEEPALIVE = 0, 1
_OUT = Direction.OUT  # bound once: an Enum member read off its class runs Python code (Python 3.11)
_SWEEP_MIN = 1024  # stale heap entries tolerated before a sweep is considered


@dataclass(slots=True)
class SaState:
    """One installed SA with its timer state."""

    params: SaParams
    esp: EspSa
    addr: tuple[str, int]
    installed: float
    soft_sent: bool = False
    last_keepalive: float = 0.0
    live: bool = True  # False once deleted or replaced: its heap entries are stale
    lifetime_at: float | None = None  # its lifetime entry's deadline, when it has one queued
    keepalive_at: float | None = None  # its keepalive entry's deadline, when it has one queued
    mark_packets: int = NEVER  # the packet count (this SA's direction) at which a limit may be reached
    mark_bytes: int = NEVER
    crossed: bool = False  # past a mark, queued for the next tick


@functools.lru_cache(maxsize=4096)  # a gateway's SAs to one peer ask again at every CHILD_SA and rekey
def keepalive_phase(addr: tuple[str, int], interval: float) -> float:
    """Where in each keepalive interval the keepalives to the peer `addr` fall (0 <= phase < interval):
    the same for every SA to it and in every process (CRC-32 of the address, not Python's salted hash)."""
    return interval * (zlib.crc32(f"{addr[0]}[{addr[1]}]".encode()) / 4294967296.0)


def first_keepalive(installed: float, addr: tuple[str, int], interval: float) -> float:
    """The first keepalive deadline of an SA installed at `installed` that has sent nothing: the next point
    of its peer's phase, within one interval (RFC 3948 §4: a keepalive when nothing else went out for
    the interval; the IKE exchange that installed the SA just refreshed the mapping)."""
    return installed + (keepalive_phase(addr, interval) - installed) % interval


def wants_keepalive(p: SaParams) -> bool:
    """RFC 3948 2.3: outbound UDP-encapsulated SAs keep their NAT mapping alive (unless told)."""
    return p.direction == _OUT and (p.encap if p.nat_keepalive is None else p.nat_keepalive)


class SaTimers:
    _sas: dict[tuple[int, Direction], SaState]
    _acquires: AcquireLimiter
    _out_cache: dict[bytes, SaState | None]
    send_udp: SendDatagram | None
    keepalive_interval: float
    keepalives_sent: int
    tick_budget: int

    if TYPE_CHECKING:
        _emit: Callable[[DataPlaneEvent], None]

        def delete_sa(self, spi: int, direction: Direction) -> None: ...

    def _timers_init(self) -> None:
        self._heap: list[tuple[float, int, int, SaState]] = []
        self._heap_seq = itertools.count()
        self._stale = 0  # heap entries of SAs no longer live
        self._crossed: list[SaState] = []  # SAs past a byte, packet or sequence mark since the last tick
        self._kept: set[tuple[str, int]] | None = None  # peers kept alive by a tick that goes on next turn
        self.timer_examined = 0  # SAs (heap entries and crossed marks) the ticks looked at, for tests

    # -- arming ----------------------------------------------------------------------------------

    def _arm(self, st: SaState) -> None:
        """A new SA: its marks, its first lifetime deadline and its keepalive."""
        self._set_marks(st)
        self._schedule_lifetime(st)
        self._schedule_keepalive(st)

    def _disarm(self, st: SaState) -> None:
        """The SA is gone: its queued entries become stale (skipped, then swept)."""
        if not st.live:
            return
        st.live = False
        self._stale += (st.lifetime_at is not None) + (st.keepalive_at is not None)
        if self._stale > _SWEEP_MIN and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[3].live]
            heapq.heapify(self._heap)
            self._stale = 0

    def _push(self, when: float, kind: int, st: SaState) -> None:
        heapq.heappush(self._heap, (when, next(self._heap_seq), kind, st))

    def _set_marks(self, st: SaState) -> None:
        """The counts at which the next byte, packet or sequence limit is reached (a soft one only
        until the soft expiry was reported, as `_check_lifetime` decides)."""
        lt, esp = st.params.lifetime, st.esp
        if not (lt.hard_packets or lt.soft_packets or lt.hard_bytes or lt.soft_bytes):  # the daemon's SAs
            out = st.params.direction == _OUT and not st.soft_sent
            st.mark_packets = esp.seq_max - esp.seq_max // 100 + 1 if out else NEVER
            st.mark_bytes = NEVER
            return
        packets = [lt.hard_packets]
        octets = [lt.hard_bytes]
        if not st.soft_sent:
            packets.append(lt.soft_packets)
            octets.append(lt.soft_bytes)
            if st.params.direction == _OUT:
                # RFC 4303 3.3.3: rekey before the counter cycles (the mark `_sent` compares seq_out with)
                packets.append(esp.seq_max - esp.seq_max // 100 + 1)
        st.mark_packets = min((n for n in packets if n), default=NEVER)
        st.mark_bytes = min((n for n in octets if n), default=NEVER)

    def _schedule_lifetime(self, st: SaState) -> None:
        lt = st.params.lifetime
        if not (lt.hard_seconds or lt.soft_seconds):
            return
        times = [lt.hard_seconds] if st.soft_sent else [lt.soft_seconds, lt.hard_seconds]
        limit = min((t for t in times if t), default=0.0)
        if limit and st.lifetime_at is None:
            st.lifetime_at = st.installed + limit
            self._push(st.lifetime_at, _LIFETIME, st)

    def _schedule_keepalive(self, st: SaState) -> None:
        if st.keepalive_at is None and wants_keepalive(st.params):
            last = max(st.esp.counters.last_out, st.last_keepalive)
            st.keepalive_at = (last + self.keepalive_interval if last
                               else first_keepalive(st.installed, st.addr, self.keepalive_interval))
            self._push(st.keepalive_at, _KEEPALIVE, st)

    # -- where the counters change ---------------------------------------------------------------

    def _sent(self, st: SaState) -> None:
        """After a seal: past the SA's next byte, packet or sequence mark, it is looked at next tick."""
        esp = st.esp  # RFC 4303 3.3.3: each packet sent takes the next sequence number, so seq_out counts them
        if (esp.seq_out >= st.mark_packets or esp.counters.bytes_out >= st.mark_bytes) and not st.crossed:
            st.crossed = True
            self._crossed.append(st)

    def _opened(self, st: SaState) -> None:
        """After an open: as `_sent`, with the inbound counters."""
        c = st.esp.counters
        if (c.packets_in >= st.mark_packets or c.bytes_in >= st.mark_bytes) and not st.crossed:
            st.crossed = True
            self._crossed.append(st)

    # -- the tick --------------------------------------------------------------------------------

    def check_timers(self, now: float) -> bool:
        """Lifetime expiry (RFC 7296 2.8) and NAT keepalives (RFC 3948 2.3) of the SAs due, at most
        `tick_budget` of their deadlines; True when more are due (call again soon: the same tick goes on,
        and a peer it kept alive already gets no second keepalive)."""
        if self._acquires.recheck(now):  # flows a trap dropped may ask again (core_ike/io/acquire.py)
            self._out_cache.clear()
        crossed, self._crossed = self._crossed, []
        due: list[tuple[float, int, int, SaState]] = []
        heap = self._heap
        budget = max(1, self.tick_budget)
        while heap and heap[0][0] <= now and len(due) < budget:
            due.append(heapq.heappop(heap))
        more = bool(heap) and heap[0][0] <= now
        self.timer_examined += len(crossed) + len(due)
        for st in crossed:
            st.crossed = False
            if st.live:
                self._check_lifetime(st, now)
        for _, _, kind, st in due:
            if not st.live:
                self._stale -= 1
            elif kind == _LIFETIME:
                st.lifetime_at = None
                self._check_lifetime(st, now)
        kept = self._kept if self._kept is not None else set()
        for _, _, kind, st in due:  # after the lifetimes: an SA they deleted sends nothing
            if kind == _KEEPALIVE and st.live:
                st.keepalive_at = None
                self._keepalive(st, now, kept)
        self._kept = kept if more else None
        return more

    def _keepalive(self, st: SaState, now: float, kept: set[tuple[str, int]]) -> None:
        """RFC 3948 2.3: a keepalive when the SA sent nothing for the interval; one per peer address a
        tick, which keeps that address's NAT mapping for every SA to it."""
        if self.send_udp is not None and wants_keepalive(st.params):
            last = max(st.esp.counters.last_out, st.last_keepalive)
            if now - last >= self.keepalive_interval:
                st.last_keepalive = now
                if st.addr not in kept:
                    kept.add(st.addr)
                    try:
                        self.send_udp(NAT_KEEPALIVE, st.addr)
                        self.keepalives_sent += 1
                    except OSError as e:
                        log.debug("keepalive to %s: %s", st.addr, e)
        if not wants_keepalive(st.params):
            return  # `update_sa` arms it again if encapsulation comes back
        st.keepalive_at = max(st.esp.counters.last_out, st.last_keepalive) + self.keepalive_interval
        if st.keepalive_at <= now:  # no transport yet: look again an interval later
            st.keepalive_at = now + self.keepalive_interval
        self._push(st.keepalive_at, _KEEPALIVE, st)

    def _check_lifetime(self, st: SaState, now: float) -> None:
        lt = st.params.lifetime
        c = st.esp.counters
        out = st.params.direction == _OUT
        nbytes, npkts = (c.bytes_out, c.packets_out) if out else (c.bytes_in, c.packets_in)
        for hard, lim_b, lim_p, lim_t in (
            (True, lt.hard_bytes, lt.hard_packets, lt.hard_seconds),
            (False, lt.soft_bytes, lt.soft_packets, lt.soft_seconds),
        ):
            reason = ""
            if lim_b and nbytes >= lim_b:
                reason = "bytes"
            elif lim_p and npkts >= lim_p:
                reason = "packets"
            elif lim_t and now >= st.installed + lim_t:  # the heap's deadline, computed alike
                reason = "time"
            if reason:
                self._expire(st, hard, reason)
                break
        else:
            if out and not st.soft_sent and st.esp.seq_remaining < st.esp.seq_max // 100:
                self._expire(st, False, "sequence")  # RFC 4303 3.3.3: rekey before the counter cycles
        if st.live:  # a soft expiry leaves the hard limits: their marks and deadline
            self._set_marks(st)
            self._schedule_lifetime(st)

    def _expire(self, st: SaState, hard: bool, reason: str) -> None:
        p = st.params
        if not hard and st.soft_sent:
            return
        st.soft_sent = True
        self._emit(SaExpired(p.spi, p.direction, p.reqid, hard, reason))
        if hard:
            self.delete_sa(p.spi, p.direction)
