"""Trap policies in the userspace data plane, on a fake clock: traffic that meets a trap without an SA
is reported as an acquire at most once per policy a second whatever its addresses, never while the
daemon has a full queue to read, and asks again a second later if it is still dropped; once the
CHILD_SA the trap started is installed its traffic goes through it (core_ike/io/acquire.py)."""

from __future__ import annotations

from core_ike.constants import EncrId
from core_ike.io.acquire import ACQUIRE_QUEUED_MAX, KEEP_MAX, AcquireLimiter
from core_ike.io.dataplane import (
    Acquire,
    DataPlaneEvent,
    Direction,
    PolicyAction,
    PolicyParams,
    SaParams,
    TrafficSelector,
)
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit.fakes import Clock, ipv4

LOCAL = "10.92.1.1"


def trap(remote: str, reqid: int) -> PolicyParams:
    return PolicyParams(TrafficSelector.parse(LOCAL + "/32"), TrafficSelector.parse(remote), Direction.OUT, reqid,
                        "192.0.2.1", "192.0.2.2", PolicyAction.TRAP)


def events(dp: UserspaceDataPlane) -> list[DataPlaneEvent]:
    out = []
    while (e := dp.next_event()) is not None:
        out.append(e)
    return out


def plane() -> tuple[UserspaceDataPlane, Clock, list[tuple[bytes, tuple[str, int]]]]:
    clock = Clock()
    sent: list[tuple[bytes, tuple[str, int]]] = []
    return UserspaceDataPlane(lambda d, a: sent.append((d, a)), clock=clock), clock, sent


def test_one_acquire_per_policy_a_second_whatever_the_addresses() -> None:
    dp, clock, _ = plane()
    dp.install_policy(trap("10.92.2.0/24", 0x40000001))
    dp.install_policy(trap("10.92.3.0/24", 0x40000002))
    for i in range(2000):  # 2000 flows into each trap: other hosts, other ports
        dp._outbound(ipv4(LOCAL, f"10.92.2.{i % 250 + 1}", sport=1000 + i), clock.t)
        dp._outbound(ipv4(LOCAL, f"10.92.3.{i % 250 + 1}", sport=1000 + i), clock.t)
    # the first packet of each: its addresses, protocol and ports (the CHILD_SA's first selectors)
    assert events(dp) == [Acquire(0x40000001, LOCAL, "10.92.2.1", 17, "192.0.2.1", "192.0.2.2", 1000, 2000),
                          Acquire(0x40000002, LOCAL, "10.92.3.1", 17, "192.0.2.1", "192.0.2.2", 1000, 2000)]
    st = dp.stats()
    # 250 hosts per trap were looked up (the flow cache keys on addresses: no policy has ports)
    assert st["acquires"] == 2 and st["acquires_limited"] == 498 and st["drop_no_policy"] == 4000
    # the same flows a little later: still cached as dropped, no lookup, no acquire
    clock.t += 0.5
    dp.check_timers(clock.t)
    dp._outbound(ipv4(LOCAL, "10.92.2.1"), clock.t)
    assert events(dp) == [] and dp.stats()["acquires_limited"] == 498
    # a second after the first acquire the dropped flows are looked up again: the next packet asks again
    clock.t += 0.5
    dp.check_timers(clock.t)
    dp._outbound(ipv4(LOCAL, "10.92.2.1"), clock.t)
    dp._outbound(ipv4(LOCAL, "10.92.2.1"), clock.t)
    assert events(dp) == [Acquire(0x40000001, LOCAL, "10.92.2.1", 17, "192.0.2.1", "192.0.2.2", 1000, 2000)]


def test_no_acquire_while_the_daemon_has_a_full_queue() -> None:
    dp, clock, _ = plane()
    for i in range(ACQUIRE_QUEUED_MAX + 5):
        dp.install_policy(trap(f"10.93.{i}.0/24", 0x40000000 + i))
    for i in range(ACQUIRE_QUEUED_MAX + 5):
        dp._outbound(ipv4(LOCAL, f"10.93.{i}.1"), clock.t)
    assert len(events(dp)) == ACQUIRE_QUEUED_MAX
    assert dp.stats()["acquires_dropped"] == 5
    clock.t += 1.0
    dp.check_timers(clock.t)  # read meanwhile: the dropped ones ask again
    for i in range(ACQUIRE_QUEUED_MAX, ACQUIRE_QUEUED_MAX + 5):
        dp._outbound(ipv4(LOCAL, f"10.93.{i}.1"), clock.t)
    assert [e.reqid for e in events(dp) if isinstance(e, Acquire)] == \
        [0x40000000 + i for i in range(ACQUIRE_QUEUED_MAX, ACQUIRE_QUEUED_MAX + 5)]


def test_the_child_sa_a_trap_started_takes_its_traffic() -> None:
    """The trap stays installed; the CHILD_SA's policy (same selectors, its own reqid), installed after
    it, comes first, so the traffic is sealed instead of asking again."""
    dp, clock, sent = plane()
    dp.install_policy(trap("10.92.2.0/24", 0x40000001))
    dp._outbound(ipv4(LOCAL, "10.92.2.7"), clock.t)
    assert len(events(dp)) == 1 and sent == []
    dp.install_sa(SaParams(spi=0x2000, direction=Direction.OUT, src="192.0.2.1", dst="192.0.2.2",
                           encr_id=EncrId.AES_GCM_16, encr_key_bits=128, encr_key=b"k" * 20, encap=True, reqid=1))
    dp.install_policy(PolicyParams(TrafficSelector.parse(LOCAL + "/32"), TrafficSelector.parse("10.92.2.0/24"),
                                   Direction.OUT, 1, "192.0.2.1", "192.0.2.2"))
    clock.t += 2
    dp._outbound(ipv4(LOCAL, "10.92.2.7"), clock.t)
    assert events(dp) == [] and len(sent) == 1 and sent[0][1] == ("192.0.2.2", 4500)


def test_the_limiter_forgets_old_policies() -> None:
    lim = AcquireLimiter()
    for r in range(KEEP_MAX * 3):
        assert lim.allow(r, float(r), 0)
    assert len(lim._last) <= KEEP_MAX
    assert not lim.allow(KEEP_MAX * 3 - 1, KEEP_MAX * 3 - 0.5, 0)  # the newest are kept
