"""UserspaceDataPlane without TUN or root: a pipe stands in for the TUN fd, a list for the socket."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from core_ike.constants import EncrId
from core_ike.io.dataplane import (
    Acquire,
    DataPlane,
    Direction,
    Lifetime,
    PolicyAction,
    PolicyParams,
    SaExpired,
    SaParams,
    TrafficSelector,
)
from core_ike.io.satimers import first_keepalive
from core_ike.io.userspace import UserspaceDataPlane

A, B = "10.91.1.1", "10.91.2.1"


def ipv4(src: str, dst: str, proto: int = 1, payload: bytes = b"x" * 20) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return hdr + payload


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def pair() -> Iterator[
    tuple[UserspaceDataPlane, UserspaceDataPlane, list[tuple[bytes, tuple[str, int]]], int]
]:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    clock = Clock()
    a = UserspaceDataPlane(lambda d, addr: sent.append((d, addr)), keepalive_interval=20.0, clock=clock)
    b = UserspaceDataPlane(lambda d, addr: None, clock=clock)
    r, w = os.pipe()
    b._tun_fd = w  # decrypted packets land in the pipe
    for dp, (lo, re) in ((a, (A, B)), (b, (B, A))):
        for d in (Direction.OUT, Direction.IN):
            dp.install_policy(
                PolicyParams(TrafficSelector.parse(lo + "/32"), TrafficSelector.parse(re + "/32"), d, reqid=1)
            )
    yield a, b, sent, r
    os.close(r)
    os.close(w)


def sa(spi: int, d: Direction, key: bytes = b"k" * 20, **kw: object) -> SaParams:
    src, dst = ("192.0.2.1", "192.0.2.2") if d == Direction.OUT else ("192.0.2.2", "192.0.2.1")
    return SaParams(
        spi=spi,
        direction=d,
        src=src,
        dst=dst,
        encr_id=EncrId.AES_GCM_16,
        encr_key_bits=128,
        encr_key=key,
        encap=True,
        reqid=1,
        **kw,
    )  # type: ignore[arg-type]


def test_is_a_dataplane() -> None:
    assert isinstance(UserspaceDataPlane(), DataPlane)


def test_outbound_inbound_and_make_before_break(
    pair: tuple[UserspaceDataPlane, UserspaceDataPlane, list[tuple[bytes, tuple[str, int]]], int],
) -> None:
    a, b, sent, tun = pair
    a.install_sa(sa(0x1000, Direction.OUT))
    b.install_sa(sa(0x1000, Direction.IN))
    pkt = ipv4(A, B)
    a._outbound(pkt, 1.0)
    a._outbound(ipv4(A, "10.99.9.9"), 1.0)  # no policy
    assert len(sent) == 1 and sent[0][1] == ("192.0.2.2", 4500) and sent[0][0][:4] == b"\x00\x00\x10\x00"
    assert a.stats()["drop_no_policy"] == 1
    b.receive_esp(sent[0][0], ("192.0.2.1", 4500))
    assert os.read(tun, 2000) == pkt
    # rekey: new inbound first, then new outbound; old inbound still accepted until deleted
    b.install_sa(sa(0x2000, Direction.IN, key=b"n" * 20))
    a._outbound(pkt, 2.0)  # still old SA
    a.install_sa(sa(0x2000, Direction.OUT, key=b"n" * 20))
    a._outbound(pkt, 3.0)
    assert [d[:4] for d, _ in sent[1:]] == [b"\x00\x00\x10\x00", b"\x00\x00\x20\x00"]
    for d, addr in sent[1:]:
        b.receive_esp(d, addr)
        assert os.read(tun, 2000) == pkt
    b.delete_sa(0x1000, Direction.IN)
    b.receive_esp(sent[1][0], ("192.0.2.1", 4500))
    assert b.stats()["drop_unknown_spi"] == 1
    usage = b.query_usage(0x2000, Direction.IN)
    assert (usage.packets, usage.bytes) == (1, len(pkt))
    rows = {(r.spi, r.direction) for r in b.list_sas()}
    assert rows == {(0x2000, "in")}


def test_packets_in_flight_on_a_path_left_are_no_new_mapping(
    pair: tuple[UserspaceDataPlane, UserspaceDataPlane, list[tuple[bytes, tuple[str, int]]], int],
) -> None:
    """A mediated IKE_SA moved from the relay to a direct path (or a followed NAT mapping): the peer's ESP
    already on its way over the path left arrives after the move and must not move the SA back; ESP that
    still comes that way a second later is the peer's real mapping again, reported."""
    a, b, sent, _tun = pair
    clock = b.clock
    assert isinstance(clock, Clock)
    a.install_sa(sa(0x1000, Direction.OUT))
    b.install_sa(sa(0x1000, Direction.IN))
    reported: list[tuple[int, tuple[str, int]]] = []
    b.on_mapping = lambda spi, src: reported.append((spi, src))
    for _ in range(3):
        a._outbound(ipv4(A, B), 1.0)
    old, new = ("192.0.2.2", 4500), ("198.51.100.7", 4500)  # the inbound SA's peer (sa()), then the new path
    b.receive_esp(sent[0][0], old)
    b.update_sa(0x1000, Direction.IN, src=new[0], src_port=new[1])  # the move
    clock.t += 0.2
    b.receive_esp(sent[1][0], old)  # in flight on the path left
    assert reported == [] and b.list_sas()[0].counters["packets_in"] == 2  # delivered, not reported
    clock.t += 1.0
    b.receive_esp(sent[2][0], old)  # still coming that way: the peer is there
    assert reported == [(0x1000, old)]
    b.delete_sa(0x1000, Direction.IN)
    assert 0x1000 not in b._mapping_seen  # nothing kept per deleted SA


def test_bad_input_counted(
    pair: tuple[UserspaceDataPlane, UserspaceDataPlane, list[tuple[bytes, tuple[str, int]]], int],
) -> None:
    a, b, sent, _tun = pair
    a.install_sa(sa(0x1000, Direction.OUT))
    b.install_sa(sa(0x1000, Direction.IN))
    for _ in range(2):
        a._outbound(ipv4(A, B), 1.0)
    good, good2 = sent[0][0], sent[1][0]
    src = ("192.0.2.1", 4500)
    b.receive_esp(good, src)
    b.receive_esp(good, src)  # replay
    b.receive_esp(good2[:-1] + bytes([good2[-1] ^ 1]), src)  # bad ICV
    b.receive_esp(good2[:12], src)  # truncated
    b.receive_esp(b"\x00\x01", src)  # shorter than SPI | Seq
    b.receive_esp(b"\x12\x34\x56\x78" + good2[4:], src)  # unknown SPI
    c = b.list_sas()[0].counters
    assert (c["packets_in"], c["drop_replay"], c["drop_bad_icv"], c["drop_truncated"]) == (1, 1, 1, 1)
    assert b.stats()["drop_unknown_spi"] == 1 and b.stats()["drop_truncated"] == 1
    # decrypts fine but the inner packet is outside the SA's selectors (RFC 4301 5.2)
    a.install_policy(
        PolicyParams(TrafficSelector.parse("0.0.0.0/0"), TrafficSelector.parse("0.0.0.0/0"), Direction.OUT, 1)
    )
    a._outbound(ipv4("10.5.5.5", B), 1.0)
    b.receive_esp(sent[-1][0], src)
    assert b.stats()["drop_policy_mismatch"] == 1


def test_keepalive_lifetimes_and_acquire() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, addr: sent.append((d, addr)), keepalive_interval=20.0, clock=clock)
    dp.install_sa(sa(0x1000, Direction.OUT, lifetime=Lifetime(soft_seconds=30, hard_seconds=60)))
    first = first_keepalive(clock.t, ("192.0.2.2", 4500), 20.0)  # at the peer's phase, within an interval
    assert clock.t <= first < clock.t + 20
    dp.check_timers(clock.t)
    assert sent == [] or first == clock.t
    dp.check_timers(first)
    assert sent == [(b"\xff", ("192.0.2.2", 4500))]  # RFC 3948 §4: idle since install
    dp.check_timers(first + 19.9)
    assert len(sent) == 1
    dp.check_timers(max(clock.t + 31, first + 20))
    assert len(sent) == 2
    assert dp.next_event() == SaExpired(0x1000, Direction.OUT, 1, False, "time")
    dp.check_timers(clock.t + 40)
    assert dp.next_event() is None  # soft expiry reported once
    dp.check_timers(clock.t + 61)
    assert dp.next_event() == SaExpired(0x1000, Direction.OUT, 1, True, "time")
    assert dp.list_sas() == []
    # TRAP policy without SA: one acquire per policy a second (core_ike/io/acquire.py)
    trap = PolicyParams(
        TrafficSelector.parse(A + "/32"),
        TrafficSelector.parse("10.91.2.0/24"),
        Direction.OUT,
        reqid=9,
        action=PolicyAction.TRAP,
    )
    dp.install_policy(trap)
    dp._outbound(ipv4(A, B, proto=17), 1.0)
    dp._outbound(ipv4(A, B, proto=17), 1.0)
    assert dp.next_event() == Acquire(9, A, B, 17, sport=0x7878, dport=0x7878)  # the payload's "xxxx" as ports
    assert dp.next_event() is None
