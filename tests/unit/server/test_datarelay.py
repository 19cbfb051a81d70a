"""The mediation server's sans-IO data relay: latching, IP check, forwarding, limits, idle expiry."""

from __future__ import annotations

import logging

import pytest

from mediation_server.datarelay import DataRelay, RelayConfig, RelayRefused

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
    t, pa, pb = _relay(idle_timeout=30.0)
    t.take_changes()
    assert t.get_timer() == 30.0
    t.receive(b"x", pa, (A_IP, 1), 10.0)  # traffic refreshes
    assert t.get_timer() == 40.0
    assert t.handle_timer(39.0) == [] and len(t) == 1
    (gone,) = t.handle_timer(40.0)
    assert gone.connect_id == b"cid1" and len(t) == 0 and t.get_timer() is None
    assert t.take_changes().closed == [(SRV, pa), (SRV, pb)]
    assert t.receive(b"x", pa, (A_IP, 1), 41.0) == []
    assert t.stats["expired"] == 1


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
