"""Time from connect() to the mediated IKE_SA on the simulation's clock (20 ms one way on every hop, no
processing time): the protocol's floor is 5 round trips (ME_CONNECT relayed both ways, one check round
trip, IKE_SA_INIT, IKE_AUTH), and the client adds nothing to it: the better host-host pair, which never
answers between two NATs and the peer's checks never arrive on, is not waited for (docs/protocol.md §8),
and the server's RELAYED candidate, checked only when no direct pair succeeded within half a mediation
round trip (docs/protocol.md §11.1), is not checked at all where the direct pair wins."""

from __future__ import annotations

from typing import Any

import pytest

from core_ike.me import events as mev
from core_ike.me.checklist import CheckListConfig
from mediation_server.datarelay import RelayConfig
from tests.unit.me_ext.mex_net import MS_IP, Net, client_config, make_net, register

ONE_WAY = 0.020
RTT = 2 * ONE_WAY
PORTS = (50000, 50099)


def _setup(**kw: Any) -> tuple[float, Net]:
    net = make_net(latency=ONE_WAY, **kw)
    register(net)
    alice = net.nodes["alice"]
    t0 = net.now
    alice.ext.connect("bob", t0)
    net.run(10.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    (_done,) = alice.of(mev.MediatedEstablished)
    assert not alice.of(mev.MediationFailed)
    return net.now - t0, net


def _to_relay(net: Net, sender: str) -> list[float]:
    return [w[0] for w in net.wire if w[1] == sender and w[3][0] == MS_IP and w[3][1] >= PORTS[0]]


def test_mediated_setup_takes_five_round_trips() -> None:
    took, _ = _setup()
    assert took == pytest.approx(5 * RTT, abs=1e-6)


def test_the_relay_candidate_adds_nothing_where_the_direct_pair_wins() -> None:
    took, net = _setup(relay=RelayConfig(ports=PORTS))
    assert took == pytest.approx(5 * RTT, abs=1e-6)
    (init,) = net.nodes["alice"].of(mev.MediatedInitiating)
    assert init.remote[0] != MS_IP
    # the controlling side never checked the RELAYED pair; the controlled side's check only latched it
    assert _to_relay(net, "alice") == []
    assert len(_to_relay(net, "bob")) >= 1


def test_without_the_relay_candidate_the_same() -> None:
    cfg = client_config(relay=False, checks=CheckListConfig(transaction_timeout=5.0, responder_timeout=10.0))
    took, _ = _setup(ccfg=cfg, relay=RelayConfig(ports=PORTS))
    assert took == pytest.approx(5 * RTT, abs=1e-6)


def test_the_relay_is_taken_within_a_few_round_trips_where_no_direct_pair_works() -> None:
    """Symmetric NATs on both sides: ME_CONNECT relayed both ways (2 RTT), the direct pairs' chance of half
    a mediation round trip (1 RTT; bob's checks never arrive on them), the relayed check (2 RTT: through
    the server both ways), taken at once as every better pair stayed silent, then IKE_SA_INIT and IKE_AUTH
    through the relay (2 RTT each)."""
    took, net = _setup(symmetric=(True, True), relay=RelayConfig(ports=PORTS))
    (init,) = net.nodes["alice"].of(mev.MediatedInitiating)
    assert init.remote[0] == MS_IP
    assert took == pytest.approx(9 * RTT, abs=1e-6)


def test_a_late_peer_costs_one_triggered_round_trip_not_a_pacing_interval() -> None:
    """1 ms one way; the server's answer to bob's ME_CONNECT is 3 ms late, so bob starts checking at 7 ms,
    3 ms after alice (4 ms): alice's first check on the srflx pair reaches bob's NAT at 5 ms, before bob's
    own check opened it, and is dropped. bob's check reaches alice at 8 ms; her triggered check leaves at
    once (not at the next pacing tick, 9 ms), is answered at 10 ms and the pair is taken then: the
    host-host pair, which bob's checks never arrive on, had its round trip by the quickest answer (2 ms)
    long before. IKE_SA_INIT and IKE_AUTH: 4 ms more."""
    from core_ike.constants import ExchangeType
    from tests.unit.me_ext.mex_net import B_PUB

    net = make_net(latency=0.001)
    register(net)

    def late(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        ike = data[4:] if data[:4] == bytes(4) else data
        response = len(ike) > 19 and ike[18] == ExchangeType.ME_CONNECT and ike[19] & 0x20
        return 0.003 if sender == "ms" and dst == (B_PUB, 4500) and response else 0.0

    net.hook = late
    alice = net.nodes["alice"]
    t0 = net.now
    alice.ext.connect("bob", t0)
    net.run(10.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    (done,) = alice.of(mev.MediatedEstablished)
    assert done.remote[1] == 4500 and net.now - t0 == pytest.approx(0.014, abs=1e-6)
