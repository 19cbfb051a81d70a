"""Many-port probing (core_ike/me/birthday.py) with a fake clock and in-memory sockets: who does what,
the bounds in packets and time, success detection, the relay held back meanwhile, and cleanup.

The end-to-end tests run three sans-IO engines in the simulated internet of tests/unit/me_ext/mex_net.py
with alice behind a port-restricted NAT (EIM/APDF) and bob behind a symmetric NAT that picks a random
port for each new mapping (APDM/APDF): without probing only the relay connects them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from core_ike.me import events as mev
from core_ike.me.birthday import (
    PROBE_MID,
    PortProbe,
    ProbeConfig,
    ProbeEnded,
    ProbeSpec,
    ProbeStarted,
    Role,
    parse_nat,
    plan,
)
from core_ike.me.checks import decode_check
from core_ike.rng import SeededRng

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))
from mex_net import (
    A_PUB,
    B_PUB,
    MS_IP,
    PORT_RESTRICTED,
    SYM_RANDOM,
    FakePool,
    Net,
    RandomNat,
    client_config,
    probing_net,
    register,
)

FULL_CONE = "mapping EIM, filtering EIF, port preserving, no hairpinning"
SYM_SEQ = "mapping APDM, filtering APDF, port not preserved, sequential ports (step 1), no hairpinning"


# ---------------------------------------------------------------------------------------------- plan


def test_roles_follow_both_nats() -> None:
    assert parse_nat(SYM_RANDOM) is not None and parse_nat(SYM_RANDOM).random  # type: ignore[union-attr]
    assert plan(SYM_RANDOM, PORT_RESTRICTED) is Role.OPEN
    assert plan(PORT_RESTRICTED, SYM_RANDOM) is Role.SPRAY
    # the usual checks serve these (full cone, prediction), nothing serves two random APDM NATs
    for own, peer in ((SYM_RANDOM, FULL_CONE), (FULL_CONE, SYM_RANDOM), (PORT_RESTRICTED, SYM_SEQ),
                      (SYM_RANDOM, SYM_RANDOM), (PORT_RESTRICTED, PORT_RESTRICTED), (SYM_RANDOM, None),
                      (None, PORT_RESTRICTED), ("unknown (no STUN answer)", SYM_RANDOM), ("", SYM_RANDOM)):
        assert plan(own, peer) is None, (own, peer)


# ---------------------------------------------------------------------------------------------- one probe


def _run(probe: PortProbe, until: float, step: float = 0.001) -> list[tuple[float, bytes, Any, Any]]:
    out = []
    now = probe.started
    while now <= until:
        t = probe.get_timer()
        if t is None:
            break
        now = max(now + step, t) if t > now else now
        probe.handle_timer(now)
        out += [(now, *d) for d in probe.datagrams_to_send()]
        if t > until:
            break
    return out


KEYS = (b"k" * 16, b"p" * 16)


def test_the_sprayer_is_bounded_in_probes_and_time() -> None:
    cfg = ProbeConfig(probes=300, rate=100.0, time=5.0)
    probe = PortProbe(ProbeSpec(Role.SPRAY, b"cid1", KEYS, ("198.18.0.9", 4500), ("10.1.0.2", 4500)),
                      100.0, SeededRng(1), cfg)
    sent = _run(probe, 110.0)
    ports = [d[3][1] for d in sent]
    assert len(sent) == probe.sent <= 300 and len(set(ports)) == len(ports)  # distinct ports
    assert 4500 not in ports and all(1024 <= p <= 65535 for p in ports)
    assert all(d[2] == ("10.1.0.2", 4500) and d[3][0] == "198.18.0.9" for d in sent)
    assert max(d[0] for d in sent) < 105.0  # every probe inside the attempt's time
    # paced: at most rate * elapsed (+1) by any moment
    for i, d in enumerate(sent):
        assert i + 1 <= 1 + (d[0] - 100.0) * cfg.rate + 1e-6, (i, d[0])
    assert probe.result is not None and not probe.result.ok and probe.result.packets == len(sent)
    assert probe.get_timer() is None
    # every probe is a well-formed connectivity check with its own message ID above any pair's
    checks = [decode_check(d[1]) for d in sent[:3]]
    assert [c.message_id for c in checks] == [PROBE_MID, PROBE_MID + 1, PROBE_MID + 2]
    assert all(c.connect_id == b"cid1" and not c.is_response for c in checks)


def test_the_sprayer_never_probes_more_ports_than_the_range_holds() -> None:
    cfg = ProbeConfig(probes=2048, rate=10000.0, burst=1000, port_range=(20000, 20099))
    probe = PortProbe(ProbeSpec(Role.SPRAY, b"cid1", KEYS, ("198.18.0.9", 20050), ("10.1.0.2", 4500)),
                      0.0, SeededRng(2), cfg)
    sent = _run(probe, 10.0)
    assert sorted(d[3][1] for d in sent) == [p for p in range(20000, 20100) if p != 20050]


def test_the_opener_sends_its_rounds_from_every_extra_socket() -> None:
    locals_ = tuple(("10.2.0.2", 40000 + i) for i in range(50))
    cfg = ProbeConfig(rate=1000.0, rounds=2, reopen=2.0, time=5.0)
    probe = PortProbe(ProbeSpec(Role.OPEN, b"cid2", KEYS, ("203.0.113.1", 4500), ("10.2.0.2", 4500), locals_),
                      0.0, SeededRng(3), cfg)
    sent = _run(probe, 6.0)
    assert len(sent) == 100 and probe.limit == 100  # 2 rounds x 50 sockets, no more
    first, second = sent[:50], sent[50:]
    assert [d[2] for d in first] == list(locals_) == [d[2] for d in second]
    assert all(d[3] == ("203.0.113.1", 4500) for d in sent)
    assert max(d[0] for d in first) < 1.0 and min(d[0] for d in second) >= 2.0
    assert probe.result is not None and not probe.result.ok


def test_a_late_timer_catches_up_by_at_most_a_burst() -> None:
    cfg = ProbeConfig(probes=2048, rate=1000.0, burst=64)
    probe = PortProbe(ProbeSpec(Role.SPRAY, b"cid3", KEYS, ("198.18.0.9", 4500), ("10.1.0.2", 4500)),
                      0.0, SeededRng(4), cfg)
    probe.handle_timer(0.0)
    assert len(probe.datagrams_to_send()) == 1
    probe.handle_timer(3.0)  # the loop was busy for 3 s
    assert len(probe.datagrams_to_send()) == 64


def test_success_stops_the_probe_and_keeps_the_socket_that_met() -> None:
    locals_ = tuple(("10.2.0.2", 40000 + i) for i in range(8))
    probe = PortProbe(ProbeSpec(Role.OPEN, b"cid4", KEYS, ("203.0.113.1", 4500), ("10.2.0.2", 4500), locals_),
                      0.0, SeededRng(5), ProbeConfig())
    probe.handle_timer(0.0)
    assert len(probe.datagrams_to_send()) == 1
    probe.succeeded(("10.2.0.2", 40003), ("203.0.113.1", 4500), 0.4)
    assert probe.result is not None and probe.result.ok and "40003" in probe.result.reason
    assert probe.keep == {("10.2.0.2", 40003)} and probe.get_timer() is None
    probe.handle_timer(1.0)
    assert probe.datagrams_to_send() == []  # nothing new after the end
    before = probe.sent
    probe.handle_timer(2.5)
    assert probe.sent == before


# ---------------------------------------------------------------------------------------------- end to end


def _net(relay: bool = True, probing: ProbeConfig | None = None, seed: int = 7) -> tuple[Net, FakePool]:
    return probing_net(client_config(probing=probing or ProbeConfig()), relay=relay, seed=seed)


def _connect(net: Net, who: str = "alice", peer: str = "bob") -> Any:
    register(net)
    node = net.nodes[who]
    node.ext.connect(peer, net.now)
    net.run(40.0, until=lambda: bool(node.of(mev.MediatedEstablished) or node.of(mev.MediationFailed)))
    return node


def test_without_probing_only_the_relay_connects_them() -> None:
    net, pool = _net(probing=ProbeConfig(enabled=False))
    alice = _connect(net)
    (up,) = alice.of(mev.MediatedEstablished)
    assert up.remote[0] == MS_IP and pool.opened == 0  # relayed; nothing probed


@pytest.mark.parametrize("initiator", ["alice", "bob"])
def test_probing_gives_a_direct_tunnel_over_an_extra_socket(initiator: str) -> None:
    """Either side may be the ME_CONNECT initiator (the controlling side that holds the relay back)."""
    net, pool = _net()
    peer = "bob" if initiator == "alice" else "alice"
    node = _connect(net, initiator, peer)
    ups = node.of(mev.MediatedEstablished)
    assert ups, node.events[-5:]
    up = ups[0]
    assert up.remote[0] != MS_IP, up  # not the relay
    bob = net.nodes["bob"]
    sa_b = next(s for s in bob.engine.ike_sas() if s.established and s.name == "alice")
    assert sa_b.remote[0] == A_PUB and sa_b.local[1] >= 40000  # bob's end: one of his extra sockets
    assert sa_b.local in pool.open_now and pool.open_now == {sa_b.local}  # the others are closed
    assert sa_b.uses_marker and sa_b.local[1] in bob.engine.natt_extra  # IKE there carries the marker
    (started,) = bob.of(ProbeStarted)
    assert started.role is Role.OPEN and started.ports == 256
    alice = net.nodes["alice"]
    assert alice.of(ProbeStarted)[0].role is Role.SPRAY
    for who in (alice, bob):  # each side reports the end with its cost, within its bounds
        (ended,) = who.of(ProbeEnded)
        assert ended.ok and ended.seconds <= 5.0, ended
        assert ended.packets <= (2048 if who is alice else 512), ended
    (conn,) = node.ext.status().connections  # `ikectl status` names the probing and its outcome
    role = "spray" if initiator == "alice" else "open"
    assert conn.probing is not None and conn.probing.startswith(f"{role}, met: pair "), conn.probing
    sent = [w for w in net.wire if w[1] == "alice" and w[3][0] == B_PUB]
    assert len(sent) < 2048 + 200  # probes plus the usual checks and the IKE_SA

    # the IKE_SA goes: its socket closes
    bob.engine.terminate(sa_b, net.now)
    net.run(5.0)
    assert pool.open_now == set() and not bob.engine.natt_extra


def test_a_probe_that_meets_nothing_ends_in_time_and_the_relay_takes_over() -> None:
    """bob's NAT maps into 1024-65535 but alice probes only 100 ports of 2000-2099: they cannot meet;
    after the attempt's 5 s the relay is selected, every extra socket closed, and the end reported."""
    net, pool = _net(probing=ProbeConfig(probes=100, port_range=(2000, 2099)), seed=11)
    net.nodes["bob"].nat = RandomNat(B_PUB, 11, 30000, 65535)
    alice = _connect(net)
    t_up, up = alice.first(mev.MediatedEstablished)  # type: ignore[misc]
    assert up.remote[0] == MS_IP  # the relay, after the probing
    (ended,) = alice.of(ProbeEnded)
    assert not ended.ok and ended.packets == 100 and "no pair met within 5 s" in ended.reason
    (conn,) = alice.ext.status().connections
    assert conn.probing == f"spray, did not meet: {ended.reason}", conn
    started_at = next(t for t, e in alice.events if isinstance(e, ProbeStarted))
    assert 4.9 <= t_up - started_at <= 6.0  # held for the probing, not for the whole check time
    net.run(10.0)
    assert pool.open_now == set() and pool.opened == 256
    (bob_end,) = net.nodes["bob"].of(ProbeEnded)
    assert not bob_end.ok


def test_no_probing_without_a_relay_report_of_the_peers_nat() -> None:
    """A peer that did not send its NAT behaviour (strongSwan, an old client): nothing probed."""
    net, pool = _net()
    net.nodes["bob"].ext.config.nat_behaviour = None
    alice = _connect(net)
    assert alice.of(ProbeStarted) == [] and net.nodes["bob"].of(ProbeStarted) == [] and pool.opened == 0
    assert alice.of(mev.MediatedEstablished)[0].remote[0] == MS_IP
    assert A_PUB  # (alice's address is the sprayer's in the other tests)


# ---------------------------------------------------------------------------------------------- limits, wire


def _list(cid: bytes, now: float = 0.0) -> Any:
    from core_ike.constants import MeEndpointType
    from core_ike.me.checklist import CheckList
    from core_ike.me.endpoints import make_endpoint

    local = [make_endpoint(MeEndpointType.HOST, "10.1.0.2", 4500),
             make_endpoint(MeEndpointType.SERVER_REFLEXIVE, A_PUB, 4500, base=("10.1.0.2", 4500))]
    remote = [make_endpoint(MeEndpointType.HOST, "10.2.0.2", 4500),
              make_endpoint(MeEndpointType.SERVER_REFLEXIVE, B_PUB, 61000)]
    cl = CheckList.for_initiator(cid, b"a" * 16, local, now)
    cl.set_responder_data(b"b" * 16, remote, now)
    return cl


def test_at_most_max_active_attempts_at_once() -> None:
    from core_ike.me.birthday import Probes

    probes = Probes(ProbeConfig(max_active=2), None, SeededRng(9), lambda a: False)
    started = [probes.start(_list(bytes([i]) * 4), PORT_RESTRICTED, SYM_RANDOM, 0.0) for i in range(3)]
    assert [p is not None for p in started] == [True, True, False]
    sprays = probes.datagrams_to_send()
    assert {d[2][0] for d in sprays} == {B_PUB} and all(d[1] == ("10.1.0.2", 4500) for d in sprays)
    # an opener needs the adapter's pool: without one it does not probe (and says so in the log)
    fresh = Probes(ProbeConfig(), None, SeededRng(9), lambda a: False)
    assert fresh.start(_list(b"\x09" * 4), SYM_RANDOM, PORT_RESTRICTED, 0.0) is None and not fresh.probes


def test_the_nat_notify_reaches_our_clients_only() -> None:
    from core_ike.codec.payloads import IdPayload, NotifyPayload
    from core_ike.constants import IdType, MeEndpointType, PayloadType
    from core_ike.me.connect import build_connect, build_relay, parse_connect
    from core_ike.me.endpoints import make_endpoint
    from core_ike.me.natinfo import IKEME_NAT_BEHAVIOUR, encode_nat

    ep = make_endpoint(MeEndpointType.HOST, "10.1.0.2", 4500)
    peer = IdPayload(PayloadType.ID_PEER, IdType.RFC822_ADDR, b"bob@example.net")
    msg = build_connect(b"cid5", b"k" * 16, [ep], peer, callback=True)
    msg.insert(len(msg) - 1, NotifyPayload(IKEME_NAT_BEHAVIOUR, encode_nat(SYM_RANDOM)))
    req = parse_connect(msg)
    assert req.nat == SYM_RANDOM.encode()
    requester = IdPayload(PayloadType.ID_PEER, IdType.RFC822_ADDR, b"alice@example.net")
    nats = [p for p in build_relay(req, requester) if isinstance(p, NotifyPayload) and p.type == IKEME_NAT_BEHAVIOUR]
    assert nats == []  # a strongSwan target never sees it
    relayed = build_relay(req, requester, private=True)
    assert isinstance(relayed[-1], IdPayload) and relayed[-2] == NotifyPayload(IKEME_NAT_BEHAVIOUR, SYM_RANDOM.encode())
    assert parse_connect(relayed).nat == SYM_RANDOM.encode()
    assert parse_connect(build_connect(b"cid5", b"k" * 16, [ep], peer)).nat is None


def test_without_a_relay_a_probe_that_meets_nothing_is_in_the_failure_report() -> None:
    net, pool = _net(relay=False, probing=ProbeConfig(probes=100, port_range=(2000, 2099), time=2.0), seed=13)
    net.nodes["bob"].nat = RandomNat(B_PUB, 13, 30000, 65535)
    alice = _connect(net)
    (failed,) = alice.of(mev.MediationFailed)
    assert failed.reason.startswith("checks failed: ") and \
        "many-port probing (spray): no pair met within 2 s (100 probes to ports of 203.0.113.2)" in failed.reason, failed
    net.run(15.0)
    assert pool.open_now == set()  # bob's extra sockets closed as well


def _held_net() -> tuple[Net, dict[str, bool]]:
    """alice's connection starts with her mediation connection (autostart): her NAT's discovery has not
    answered yet when the mediation SA comes up."""
    net, _ = _net()
    flags = {"pending": True}
    alice = net.nodes["alice"]
    alice.ext.config.nat_pending = lambda: flags["pending"]
    alice.ext.config.nat_behaviour = lambda: None if flags["pending"] else PORT_RESTRICTED
    register(net, "bob")
    return net, flags


def test_me_connect_waits_for_the_nat_discovery_and_then_probes() -> None:
    net, flags = _held_net()
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(1.0)
    assert alice.of(mev.MediationSaUp) and not alice.of(mev.MeConnectSent)  # held for the discovery
    flags["pending"] = False
    alice.ext.nat_known(net.now)  # the adapter's discovery answered
    assert alice.of(mev.MeConnectSent) or alice.engine.datagrams_to_send()
    net.run(20.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    (up,) = alice.of(mev.MediatedEstablished)
    assert up.remote[0] == B_PUB and alice.of(ProbeStarted), up  # direct, by probing


def test_the_wait_for_the_nat_discovery_is_bounded() -> None:
    net, _flags = _held_net()  # the discovery never answers
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(10.0, until=lambda: bool(alice.of(mev.MeConnectSent)))
    t_up = alice.first(mev.MediationSaUp)[0]  # type: ignore[index]
    t_sent = alice.first(mev.MeConnectSent)[0]  # type: ignore[index]
    assert 2.9 <= t_sent - t_up <= 3.1  # probing.nat_wait
    net.run(20.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    assert alice.of(mev.MediatedEstablished)[0].remote[0] == MS_IP and not alice.of(ProbeStarted)  # relayed


ADDR_RESTRICTED = "mapping EIM, filtering ADF, port preserving, no hairpinning"


def test_an_adf_nat_facing_an_apdm_one_gives_the_learnt_pair_time_before_the_relay() -> None:
    from core_ike.me.birthday import Probes, learns

    assert learns(ADDR_RESTRICTED, SYM_RANDOM) and learns(SYM_SEQ, ADDR_RESTRICTED)
    assert not learns(PORT_RESTRICTED, SYM_RANDOM) and not learns(ADDR_RESTRICTED, PORT_RESTRICTED)
    assert not learns(FULL_CONE, SYM_RANDOM) and not learns(None, SYM_RANDOM)
    probes = Probes(ProbeConfig(), None, SeededRng(9), lambda a: False)
    cl = _list(b"cid6", 10.0)  # the controlling side
    assert probes.start(cl, ADDR_RESTRICTED, SYM_RANDOM, 10.0) is None and not probes.probes
    assert cl.relay_hold == pytest.approx(10.15)  # nothing probed, the relay waits 150 ms at most
    off = Probes(ProbeConfig(learn_wait=0.0), None, SeededRng(9), lambda a: False)
    cl2 = _list(b"cid7", 10.0)
    assert off.start(cl2, ADDR_RESTRICTED, SYM_RANDOM, 10.0) is None and cl2.relay_hold is None
