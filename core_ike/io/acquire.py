"""How often the userspace data plane reports an acquire (traffic that matched a trap policy without
an SA; docs/gateway.md, "Trap policies").

Whoever can send packets into the TUN device (a host behind the gateway, a local program, traffic
forwarded from elsewhere) chooses their addresses, so an acquire must cost nothing per flow:

- at most one acquire per trap policy (its reqid) every ``interval`` seconds, whatever the packets'
  addresses; the daemon starts one CHILD_SA per policy and ignores acquires while it is under way;
- no acquire while ``max_queued`` events wait for the daemon (the next packet asks again later);
- the state is one time per reqid of a trap policy, those older than ``interval`` dropped when there
  are more than ``KEEP_MAX``.

Flows whose packets met a trap without an SA are remembered as dropped by the data plane's flow
cache; ``recheck`` says when to forget that (once per ``interval`` after an acquire), so that a flow
still sending when an attempt failed asks again, as the kernel does when its acquire state expires.
"""

from __future__ import annotations

ACQUIRE_INTERVAL = 1.0  # seconds between two acquires of one trap policy
ACQUIRE_QUEUED_MAX = 64  # events waiting for the daemon beyond which no acquire is queued
KEEP_MAX = 1024  # reqids remembered before the old ones are dropped


class AcquireLimiter:
    """Which acquires to report (times are the data plane's clock, seconds)."""

    def __init__(self, interval: float = ACQUIRE_INTERVAL, max_queued: int = ACQUIRE_QUEUED_MAX) -> None:
        self.interval = interval
        self.max_queued = max_queued
        self._last: dict[int, float] = {}  # reqid -> its last acquire
        self._recheck_at: float | None = None  # when flows cached as dropped by a trap are looked up again
        self.reported = 0
        self.limited = 0  # not reported: the policy's last acquire was less than `interval` ago
        self.dropped = 0  # not reported: the daemon had `max_queued` events to read

    def allow(self, reqid: int, now: float, queued: int) -> bool:
        """An acquire of trap policy `reqid` now, with `queued` events waiting: report it?"""
        if self._recheck_at is None:
            self._recheck_at = now + self.interval
        last = self._last.get(reqid)
        if last is not None and now - last < self.interval:
            self.limited += 1
            return False
        if queued >= self.max_queued:
            self.dropped += 1
            return False
        if len(self._last) >= KEEP_MAX:
            self._last = {r: t for r, t in self._last.items() if now - t < self.interval}
        self._last[reqid] = now
        self.reported += 1
        return True

    def recheck(self, now: float) -> bool:
        """True once `interval` after the first acquire of a round: the flows a trap dropped are to be
        looked up again (then the next packet of each may ask again)."""
        if self._recheck_at is None or now < self._recheck_at:
            return False
        self._recheck_at = None
        return True

    def counters(self) -> dict[str, int]:
        return {"acquires": self.reported, "acquires_limited": self.limited, "acquires_dropped": self.dropped}
