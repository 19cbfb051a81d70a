"""The userspace data plane's lifetimes and keepalives by deadline (core_ike/io/satimers.py), on a fake
clock: expiries at their time, none for SAs deleted before it, counter limits where the counters
change, and a tick that looks at the SAs due only (counted, not timed)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from core_ike.io.dataplane import (
    DataPlaneEvent,
    Direction,
    Lifetime,
    PolicyParams,
    SaExpired,
    TrafficSelector,
)
from core_ike.io.satimers import first_keepalive
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit.esp.test_userspace_backend import A, B, Clock, ipv4, sa

Sent = list[tuple[bytes, tuple[str, int]]]
PEER = ("192.0.2.2", 4500)  # where `sa` sends


def events(dp: UserspaceDataPlane) -> list[DataPlaneEvent]:
    out = []
    while (e := dp.next_event()) is not None:
        out.append(e)
    return out


def tick(dp: UserspaceDataPlane, now: float) -> int:
    """One whole tick at `now`: `check_timers` again while it says more is due (the data plane calls it
    again at the event loop's next turn); how many calls it took."""
    calls = 1
    while dp.check_timers(now):
        calls += 1
    return calls


def plane(clock: Clock, sent: Sent | None = None, budget: int = 1000) -> UserspaceDataPlane:
    box = sent if sent is not None else []
    dp = UserspaceDataPlane(lambda d, addr: box.append((d, addr)), keepalive_interval=20.0, clock=clock,
                            tick_budget=budget)
    for d in (Direction.OUT, Direction.IN):
        lo, re = (A, B) if d == Direction.OUT else (B, A)
        dp.install_policy(PolicyParams(TrafficSelector.parse(lo + "/32"), TrafficSelector.parse(re + "/32"), d, 1))
    return dp


@pytest.fixture
def tun() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


def test_time_limits_fire_at_their_tick_soft_once_then_hard() -> None:
    clock = Clock()
    t0 = clock.t
    dp = plane(clock)
    dp.install_sa(sa(0x1000, Direction.IN, lifetime=Lifetime(soft_seconds=30, hard_seconds=60)))
    dp.install_sa(sa(0x2000, Direction.IN, lifetime=Lifetime(hard_seconds=45)))
    for t in (0, 10, 29.99):
        dp.check_timers(t0 + t)
    assert events(dp) == []
    dp.check_timers(t0 + 30)
    assert events(dp) == [SaExpired(0x1000, Direction.IN, 1, False, "time")]
    dp.check_timers(t0 + 44)
    assert events(dp) == []  # the soft expiry is reported once
    dp.check_timers(t0 + 45.5)
    assert events(dp) == [SaExpired(0x2000, Direction.IN, 1, True, "time")]
    assert [r.spi for r in dp.list_sas()] == [0x1000]
    dp.check_timers(t0 + 60)
    assert events(dp) == [SaExpired(0x1000, Direction.IN, 1, True, "time")]
    assert dp.list_sas() == []
    dp.check_timers(t0 + 1000)
    assert events(dp) == []


def test_sas_deleted_or_replaced_before_their_deadline_never_fire() -> None:
    clock = Clock()
    t0 = clock.t
    dp = plane(clock)
    for i in range(3000):
        dp.install_sa(sa(0x1000 + i, Direction.IN, lifetime=Lifetime(soft_seconds=30 + i % 7, hard_seconds=60)))
    for i in range(0, 3000, 2):
        dp.delete_sa(0x1000 + i, Direction.IN)
    # the same SPI installed again replaces the SA: only the new one's deadline counts
    dp.install_sa(sa(0x1001, Direction.IN, lifetime=Lifetime(hard_seconds=500)))
    assert len(dp._heap) < 3000  # stale entries swept once they outnumber the live ones
    expected = {0x1000 + i for i in range(3, 3000, 2)}  # odd ones but the replaced 0x1001
    tick(dp, t0 + 40)
    assert {e.spi for e in events(dp) if isinstance(e, SaExpired) and not e.hard} == expected
    tick(dp, t0 + 100)
    assert {e.spi for e in events(dp) if isinstance(e, SaExpired) and e.hard} == expected
    assert [r.spi for r in dp.list_sas()] == [0x1001]
    dp.check_timers(t0 + 499)
    assert events(dp) == []
    dp.check_timers(t0 + 500)
    assert events(dp) == [SaExpired(0x1001, Direction.IN, 1, True, "time")]


def test_packet_and_byte_limits_where_the_counters_change(tun: tuple[int, int]) -> None:
    clock = Clock()
    a, b = plane(clock), plane(clock)
    a.install_sa(sa(0x1000, Direction.OUT, lifetime=Lifetime(soft_packets=3, hard_packets=5)))
    pkt = ipv4(A, B)
    b.install_sa(sa(0x1000, Direction.IN, lifetime=Lifetime(soft_bytes=2 * len(pkt), hard_bytes=4 * len(pkt))))
    b._tun_fd = tun[1]
    sent: Sent = []
    a.send_udp = lambda d, addr: sent.append((d, addr))
    for n in range(1, 6):
        a._outbound(pkt, clock.t)
        b.receive_esp(sent[-1][0], ("192.0.2.1", 4500))
        if n <= 4:  # b's SA is gone after its hard byte limit
            assert os.read(tun[0], 2000) == pkt
        a.check_timers(clock.t)
        b.check_timers(clock.t)
        ea, eb = events(a), events(b)
        assert ea == {3: [SaExpired(0x1000, Direction.OUT, 1, False, "packets")],
                      5: [SaExpired(0x1000, Direction.OUT, 1, True, "packets")]}.get(n, []), n
        assert eb == {2: [SaExpired(0x1000, Direction.IN, 1, False, "bytes")],
                      4: [SaExpired(0x1000, Direction.IN, 1, True, "bytes")]}.get(n, []), n
    assert a.list_sas() == [] and b.list_sas() == []


def test_sequence_margin_reported_once_before_the_counter_cycles() -> None:
    clock = Clock()
    dp = plane(clock)
    dp.install_sa(sa(0x1000, Direction.OUT))
    st = dp._sas[(0x1000, Direction.OUT)]
    margin = st.esp.seq_max - st.esp.seq_max // 100  # RFC 4303 3.3.3: soft expiry when fewer remain
    st.esp.seq_out = margin - 1
    dp._outbound(ipv4(A, B), clock.t)
    dp.check_timers(clock.t)
    assert events(dp) == []
    dp._outbound(ipv4(A, B), clock.t)
    dp._outbound(ipv4(A, B), clock.t)
    dp.check_timers(clock.t)
    assert events(dp) == [SaExpired(0x1000, Direction.OUT, 1, False, "sequence")]
    dp._outbound(ipv4(A, B), clock.t)
    dp.check_timers(clock.t + 1)
    assert events(dp) == []


def test_keepalives_idle_sas_only_one_per_address() -> None:
    clock = Clock()
    t0 = clock.t
    sent: Sent = []
    dp = plane(clock, sent)
    dp.install_sa(sa(0x1000, Direction.OUT))
    dp.install_sa(dataclasses.replace(sa(0x2000, Direction.OUT), reqid=2))  # a second CHILD_SA to the same peer
    dp.install_sa(dataclasses.replace(sa(0x3000, Direction.OUT, nat_keepalive=False), reqid=3))
    first = first_keepalive(t0, PEER, 20.0)  # the peer's phase (core_ike/io/satimers.py)
    dp.check_timers(first - 0.5)
    assert sent == []
    dp.check_timers(first)
    assert sent == [(b"\xff", PEER)]  # RFC 3948 §4: idle since installed; one for both SAs to the peer
    dp.check_timers(first + 1)
    dp.check_timers(first + 19)
    assert len(sent) == 1
    dp.check_timers(first + 20)
    assert sent[1:] == [(b"\xff", PEER)]
    # traffic moves the keepalive: none while the SA sends (the other one's address is kept with it)
    dp.delete_sa(0x2000, Direction.OUT)
    del sent[:]
    for t in range(21, 80):
        clock.t = first + t
        dp._outbound(ipv4(A, B), clock.t)
        dp.check_timers(clock.t)
    assert [t for t, (d, _) in enumerate(sent) if d == b"\xff"] == []
    dp.check_timers(first + 99)
    assert sent[-1] == (b"\xff", PEER)
    # encapsulation switched off and on again: keepalives stop, then come back
    dp.update_sa(0x1000, Direction.OUT, encap=False)
    n = len(sent)
    dp.check_timers(first + 200)
    assert len(sent) == n
    dp.update_sa(0x1000, Direction.OUT, encap=True)
    dp.check_timers(first + 201)
    assert sent[-1] == (b"\xff", PEER) and len(sent) == n + 1


def test_a_tick_looks_at_the_sas_due_not_the_sas_held() -> None:
    clock = Clock()
    t0 = clock.t
    sent: Sent = []
    dp = plane(clock, sent)
    n = 10_000
    for i in range(n):  # inbound: no keepalives; soft limits one second apart, byte limits on all
        dp.install_sa(sa(0x10000 + i, Direction.IN,
                         lifetime=Lifetime(soft_seconds=1000 + i, hard_seconds=100_000, hard_bytes=1 << 30)))
    for i in range(n):  # outbound, each with its keepalive, busy or idle
        dp.install_sa(dataclasses.replace(sa(0x40000 + i, Direction.OUT, nat_keepalive=True), reqid=1 + i))
    first = first_keepalive(t0, PEER, 20.0)  # every outbound SA goes to PEER: they share its phase
    tick(dp, first)  # every outbound SA idle since installed: its keepalive is due
    assert dp.timer_examined == n
    assert len(sent) == 1  # one keepalive to the peer serves them all, over the tick's several calls
    for k in range(1, 19):  # nothing due: nothing looked at
        dp.timer_examined = 0
        tick(dp, first + k)
        assert dp.timer_examined == 0
    dp.timer_examined = 0
    tick(dp, t0 + 1009.5)  # the soft limits of SAs 0..9 and the keepalives of first+20 .. (50 intervals)
    assert len([e for e in events(dp) if isinstance(e, SaExpired)]) == 10
    looked = dp.timer_examined
    dp.timer_examined = 0
    tick(dp, t0 + 1010.5)
    assert dp.timer_examined == 1  # SA 10's soft limit (the keepalives are due an interval after the last)
    assert events(dp) == [SaExpired(0x10000 + 10, Direction.IN, 1, False, "time")]
    assert looked == 10 + n  # the ten soft limits and each outbound SA's keepalive once (one per address)


def test_a_call_looks_at_no_more_than_its_budget_and_the_tick_goes_on() -> None:
    clock = Clock()
    t0 = clock.t
    sent: Sent = []
    dp = plane(clock, sent, budget=100)
    n = 450
    for i in range(n):  # one peer: one phase, so all due in the same tick
        dp.install_sa(dataclasses.replace(sa(0x40000 + i, Direction.OUT), reqid=1 + i))
    first = first_keepalive(t0, PEER, 20.0)
    looked = []
    while True:  # the data plane's tick calls again at the loop's next turn while this says more is due
        dp.timer_examined = 0
        more = dp.check_timers(first)
        looked.append(dp.timer_examined)
        if not more:
            break
    assert looked == [100, 100, 100, 100, 50]
    assert sent == [(b"\xff", PEER)]  # the tick's later calls know the peer was kept alive
    dp.timer_examined = 0
    assert tick(dp, first + 20) == 5 and len(sent) == 2  # the next tick: one keepalive again
    assert dp.timer_examined == n


def test_keepalives_of_sas_installed_together_spread_over_the_interval() -> None:
    clock = Clock()
    t0 = clock.t
    sent: Sent = []
    dp = plane(clock, sent, budget=1_000_000)
    n = 2000
    peers = [(f"198.51.{i // 250}.{i % 250 + 1}", 4500 + i % 7) for i in range(n)]
    for i, peer in enumerate(peers):  # a gateway's restart: every peer's SA installed at once
        dp.install_sa(dataclasses.replace(sa(0x40000 + i, Direction.OUT), reqid=1 + i, dst=peer[0], dst_port=peer[1]))
    per_tick = []
    for k in range(41):  # ticks a second apart over two intervals
        before = len(sent)
        dp.check_timers(t0 + k)
        per_tick.append(len(sent) - before)
    # each peer first within an interval of its installation, then an interval after its last one
    assert sum(per_tick[:21]) == n and sum(per_tick) == 2 * n
    assert sorted(addr for _, addr in sent) == sorted(peers * 2)
    assert max(per_tick) < n / 10  # about n/20 a tick, never all of them in one
