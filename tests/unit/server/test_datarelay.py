"""The mediation server's sans-IO data relay: latching, IP check, forwarding, limits, idle expiry."""

from __future__ import annotations

import logging

import pytest

from core_ike.constants import NON_ESP_MARKER, MeEndpointType
from core_ike.me.checks import encode_check, make_check
from core_ike.me.endpoints import make_endpoint
from mediation_server.datarelay import DataRelay, RelayConfig, RelayRefused, is_check

SRV = "198.51.100.1"
A_IP, B_IP = "203.0.113.1", "203.0.113.2"


def _relay(**kw: object) -> tuple[DataRelay, int, int]:
    cfg = RelayConfig(**{"ports": (50000, 50009), **kw})  # type: ignore[arg-type]
    t = DataRelay(cfg)
    r = t.allocate(b"cid1", SRV, ("alice", A_IP), ("bob", B_IP), 0.0)
    return t, r.a.port, r.b.port  # a.port: alice sends here (bob's RELAYED), b.port: bob's


def test_allocate_two_ports_and_report_them_to_the_socket_layer() -> None:
    t, pa, pb = _relay()
    assert (pa, pb) == (50000, 50001)
    ch = t.take_changes()
    assert ch.opened == [(SRV, 50000), (SRV, 50001)] and not ch.closed
    assert not t.take_changes().opened
    assert t.allocate(b"cid1", SRV, ("alice", A_IP), ("bob", B_IP), 1.0).a.port == pa  # same connect ID


def test_forwarding_both_ways_after_latching() -> None:
    t, pa, pb = _relay()
    # alice first: latched, but bob is not yet known -> dropped (the checks retransmit)
    assert t.receive(b"x1", pa, (A_IP, 40001), 1.0) == []
    # bob: latched; alice known -> forwarded out of alice's port to her latched address
    assert t.receive(b"y1", pb, (B_IP, 61000), 1.1) == [(b"y1", pa, (A_IP, 40001))]
    assert t.receive(b"x2", pa, (A_IP, 40001), 1.2) == [(b"x2", pb, (B_IP, 61000))]
    (st,) = t.status(2.0)
    assert st.a_latched == (A_IP, 40001) and st.b_latched == (B_IP, 61000)
    assert (st.bytes_a_to_b, st.bytes_b_to_a, st.packets) == (2, 2, 2)
    assert st.idle == pytest.approx(0.8)


def test_only_the_mediation_sa_ip_can_latch_and_same_ip_relatches() -> None:
    t, pa, pb = _relay()
    t.receive(b"y", pb, (B_IP, 61000), 1.0)
    assert t.receive(b"evil", pa, ("192.0.2.66", 40001), 1.0) == []  # hijack attempt
    assert t.receive(b"evil", pb, (A_IP, 40001), 1.0) == []  # alice's IP at bob's port: not bob
    (st,) = t.status(1.0)
    assert st.a_latched is None and st.b_latched == (B_IP, 61000)
    t.receive(b"x", pa, (A_IP, 40001), 1.0)
    # NAT rebinding on bob's side: same IP, new port -> re-latched, traffic follows
    assert t.receive(b"y2", pb, (B_IP, 61555), 1.1) == [(b"y2", pa, (A_IP, 40001))]
    assert t.receive(b"x2", pa, (A_IP, 40001), 1.2) == [(b"x2", pb, (B_IP, 61555))]
    assert t.receive(b"?", 50009, (A_IP, 40001), 1.2) == []  # unallocated port


def test_idle_expiry_frees_the_ports() -> None:
    t, pa, pb = _relay(idle_timeout=30.0, unused_timeout=5.0)
    t.take_changes()
    assert t.get_timer() == 5.0  # nothing forwarded yet: the unused timeout
    t.receive(b"y", pb, (B_IP, 2), 1.0)  # bob latched, nothing forwarded (alice unknown)
    t.receive(IKE_SA_INIT, pa, (A_IP, 1), 2.0)  # forwarded, not a check: in use
    assert t.get_timer() == 32.0
    t.receive(b"x", pa, (A_IP, 1), 10.0)  # traffic refreshes
    assert t.get_timer() == 40.0
    assert t.handle_timer(39.0) == [] and len(t) == 1
    (gone,) = t.handle_timer(40.0)
    assert gone.connect_id == b"cid1" and gone.freed_reason == "idle" and len(t) == 0 and t.get_timer() is None
    assert t.take_changes().closed == [(SRV, pa), (SRV, pb)]
    assert t.receive(b"x", pa, (A_IP, 1), 41.0) == []
    assert t.stats["expired"] == 1


def _check(is_response: bool = False) -> bytes:
    ep = make_endpoint(MeEndpointType.PEER_REFLEXIVE, A_IP, 4500)
    return NON_ESP_MARKER + encode_check(make_check(is_response, 3, b"cid1", ep, b"k" * 16))


# the mediated IKE_SA_INIT through the relay (non-ESP marker, SPIi set) and ESP-in-UDP (SPI first)
IKE_SA_INIT = NON_ESP_MARKER + bytes.fromhex("0102030405060708" + "00" * 8 + "21202208" + "00" * 8)
ESP = bytes.fromhex("c0ffee01") + b"\x00\x00\x00\x01" + b"e" * 40


def test_only_checks_is_unused() -> None:
    assert is_check(_check()) and is_check(_check(True))
    for data in (IKE_SA_INIT, ESP, b"\xff", b"", _check()[4:], NON_ESP_MARKER + bytes(28)):
        assert not is_check(data), data


def test_unused_relay_expires_early(caplog: pytest.LogCaptureFixture) -> None:
    """Gap: a relay is allocated for every ME_CONNECT; when the direct pair wins it must not hold its
    ports for the idle timeout. Never latched, or latched by checks only: the unused timeout."""
    caplog.set_level(logging.INFO, logger="mediation_server.relay")
    t, pa, pb = _relay(idle_timeout=120.0)  # default unused_timeout: 15 s
    assert t.config.unused_timeout == 15.0 and t.get_timer() == 15.0
    t.touch(t.by_connect_id(b"cid1"), 4.0)  # type: ignore[arg-type]  # the ME_CONNECT response went through
    assert t.get_timer() == 19.0
    # the relayed pair is checked both ways while the direct pair wins: both sides latched, checks only
    assert t.receive(_check(), pa, (A_IP, 4500), 5.0) == []
    assert t.receive(_check(), pb, (B_IP, 4500), 5.1) != []
    assert t.receive(_check(True), pa, (A_IP, 4500), 5.2) != []
    (st,) = t.status(5.2)
    assert st.a_latched and st.b_latched and not st.in_use
    assert t.get_timer() == pytest.approx(20.2)
    assert t.handle_timer(20.0) == []
    (gone,) = t.handle_timer(20.2)
    assert gone.freed_reason == "unused" and len(t) == 0 and "unused for 15 s" in caplog.text
    # a relay that never latched at all goes the same way; the unused timeout never exceeds the idle one
    t2 = DataRelay(RelayConfig(ports=(50000, 50009), idle_timeout=10.0, unused_timeout=15.0))
    t2.allocate(b"c", SRV, ("alice", A_IP), ("bob", B_IP), 0.0)
    assert t2.get_timer() == 10.0 and t2.handle_timer(10.0)[0].freed_reason == "unused"


def test_relay_carrying_data_is_in_use() -> None:
    for data in (IKE_SA_INIT, ESP):
        t, pa, pb = _relay(idle_timeout=120.0, unused_timeout=15.0)
        t.receive(_check(), pb, (B_IP, 4500), 1.0)
        t.receive(_check(), pa, (A_IP, 4500), 1.0)
        assert t.get_timer() == 16.0
        assert t.receive(data, pa, (A_IP, 4500), 2.0) == [(data, pb, (B_IP, 4500))]
        assert t.status(2.0)[0].in_use and t.get_timer() == 122.0
        t.receive(_check(), pa, (A_IP, 4500), 3.0)  # stays in use
        assert t.handle_timer(100.0) == [] and t.get_timer() == 123.0


def test_release_peer_keeps_relays_that_carry_traffic() -> None:
    """Gap: a peer's mediation SA is gone (not re-registered): its relays go, except those carrying
    traffic (both sides latched, active within the idle timeout); other peers' relays stay."""
    t = DataRelay(RelayConfig(ports=(50000, 50009), idle_timeout=60.0))
    unused = t.allocate(b"c1", SRV, ("alice", A_IP), ("bob", B_IP), 0.0)
    busy = t.allocate(b"c2", SRV, ("carl", B_IP), ("alice", A_IP), 0.0)
    half = t.allocate(b"c3", SRV, ("alice", A_IP), ("dave", B_IP), 0.0)
    other = t.allocate(b"c4", SRV, ("erin", B_IP), ("dave", B_IP), 0.0)
    t.receive(b"y", busy.a.port, (B_IP, 1), 1.0)
    assert t.receive(ESP, busy.b.port, (A_IP, 2), 2.0)  # carl <-> alice tunnel through the relay
    t.receive(b"x", half.a.port, (A_IP, 2), 2.0)  # only alice latched
    t.take_changes()
    gone = t.release_peer("alice", 10.0)
    assert {r.id for r in gone} == {unused.id, half.id}
    assert {r.id for r in t} == {busy.id, other.id}
    assert sorted(p for _, p in t.take_changes().closed) == sorted(
        [unused.a.port, unused.b.port, half.a.port, half.b.port])
    assert t.stats["released"] == 2
    assert t.receive(ESP, busy.b.port, (A_IP, 2), 11.0) == [(ESP, busy.a.port, (B_IP, 1))]  # still relays
    # carrying traffic means active within the idle timeout
    assert t.carries_traffic(busy, 11.0 + 59.0) and not t.carries_traffic(busy, 11.0 + 60.0)
    assert [r.id for r in t.release_peer("alice", 71.0)] == [busy.id]
    assert t.release_peer("nobody", 71.0) == [] and [r.id for r in t] == [other.id]


def test_limits_per_peer_total_and_ports(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mediation_server.relay")
    t = DataRelay(RelayConfig(ports=(50000, 50009), per_peer=2, total=3))
    t.allocate(b"c1", SRV, ("alice", A_IP), ("bob", B_IP), 0.0)
    t.allocate(b"c2", SRV, ("alice", A_IP), ("carl", B_IP), 0.0)
    with pytest.raises(RelayRefused, match="'alice' holds 2 relays"):
        t.allocate(b"c3", SRV, ("alice", A_IP), ("dave", B_IP), 0.0)
    t.allocate(b"c4", SRV, ("erin", A_IP), ("dave", B_IP), 0.0)
    with pytest.raises(RelayRefused, match="relay limit reached"):
        t.allocate(b"c5", SRV, ("fred", A_IP), ("gina", B_IP), 0.0)
    assert "refused" in caplog.text and t.stats["refused"] == 2
    # a freed relay counts no more for either side (the counts are kept, not recounted per ME_CONNECT)
    t.release(t.by_connect_id(b"c1").id, "test")  # type: ignore[union-attr]
    assert t.allocate(b"c3", SRV, ("dave", B_IP), ("alice", A_IP), 0.0) is not None
    t.release(t.by_connect_id(b"c4").id, "test")  # type: ignore[union-attr]  # below the total again
    with pytest.raises(RelayRefused, match="'alice' holds 2 relays"):
        t.allocate(b"c6", SRV, ("bob", B_IP), ("alice", A_IP), 0.0)
    for r in list(t):
        t.release(r.id, "test")
    assert t.release_peer("alice", 1.0) == [] and len(t) == 0
    assert t.allocate(b"c7", SRV, ("alice", A_IP), ("dave", B_IP), 0.0) is not None
    small = DataRelay(RelayConfig(ports=(50000, 50002)))
    small.allocate(b"c1", SRV, ("a", A_IP), ("b", B_IP), 0.0)
    with pytest.raises(RelayRefused, match="no free relay ports"):
        small.allocate(b"c2", SRV, ("c", A_IP), ("d", B_IP), 0.0)
    small.release(small.by_connect_id(b"c1").id, "test")  # type: ignore[union-attr]
    assert small.allocate(b"c2", SRV, ("c", A_IP), ("d", B_IP), 0.0) is not None  # ports reused


def test_rate_cap_drops_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mediation_server.relay")
    t, pa, pb = _relay(rate_bytes=1000.0, rate_packets=1000.0, burst=1.0)
    t.receive(b"", pb, (B_IP, 2), 0.0)  # latch bob (0 bytes)
    sent = sum(len(t.receive(b"z" * 100, pa, (A_IP, 1), 0.0)) for _ in range(20))
    assert sent == 10  # 1000-byte bucket: 10 x 100 bytes, then drops
    assert caplog.text.count("rate limit") == 1  # one line, not one per packet
    assert t.receive(b"z" * 100, pa, (A_IP, 1), 0.5) != []  # refilled after 0.5 s
    assert "below the rate limit again" in caplog.text


def test_config_checks_port_range() -> None:
    with pytest.raises(ValueError):
        RelayConfig(ports=(100, 200))
    with pytest.raises(ValueError):
        RelayConfig(unused_timeout=0.0)


def test_repeated_refusal_is_logged_at_info_once(caplog: pytest.LogCaptureFixture) -> None:
    """A peer at its limit is refused on every ME_CONNECT: the first refusal for a reason at info, the same
    reason again at debug (counted), a new reason or a refusal after an allocation at info again."""
    caplog.set_level(logging.DEBUG, logger="mediation_server.relay")
    t = DataRelay(RelayConfig(ports=(50000, 50009), per_peer=1))
    t.allocate(b"c1", SRV, ("alice", A_IP), ("bob", B_IP), 0.0)

    def refused(cid: bytes, a: str, b: str) -> list[tuple[int, str]]:
        caplog.clear()
        with pytest.raises(RelayRefused):
            t.allocate(cid, SRV, (a, A_IP), (b, B_IP), 0.0)
        return [(r.levelno, r.getMessage()) for r in caplog.records if "refused" in r.getMessage()]

    assert refused(b"c2", "alice", "bob") == [(logging.INFO, "relay for 'alice' <-> 'bob' refused: 'alice' holds 1 "
                                                             "relays (limit 1)")]
    assert refused(b"c3", "alice", "bob") == [(logging.DEBUG, "relay for 'alice' <-> 'bob' refused: 'alice' holds 1 "
                                                              "relays (limit 1) (again)")]
    assert refused(b"c4", "bob", "carl")[0][0] == logging.INFO  # another reason: 'bob' holds 1
    t.allocate(b"c5", SRV, ("dave", A_IP), ("erin", B_IP), 0.0)  # an allocation between: info again
    assert refused(b"c6", "bob", "carl")[0][0] == logging.INFO
    assert t.stats["refused"] == 4
