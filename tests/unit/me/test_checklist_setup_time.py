"""Time from connect() to the mediated IKE_SA on the simulation's clock (20 ms one way on every hop, no
processing time): the protocol's floor is 5 round trips (ME_CONNECT relayed both ways, one check round
trip, IKE_SA_INIT, IKE_AUTH), and the client adds nothing to it: the better host-host pair, which never
answers between two NATs and the peer's checks never arrive on, is not waited for (docs/protocol.md §8),
and the server's RELAYED candidate, checked only when no direct pair succeeded within a mediation round
trip (docs/protocol.md §11.1), is not checked at all where the direct pair wins."""

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
    """Symmetric NATs on both sides: ME_CONNECT relayed both ways (2 RTT), the direct pairs' chance of one
    mediation round trip (2 RTT), the relayed check (2 RTT: through the server both ways), taken at once
    as every better pair stayed silent, then IKE_SA_INIT and IKE_AUTH through the relay (2 RTT each)."""
    took, net = _setup(symmetric=(True, True), relay=RelayConfig(ports=PORTS))
    (init,) = net.nodes["alice"].of(mev.MediatedInitiating)
    assert init.remote[0] == MS_IP
    assert took == pytest.approx(10 * RTT, abs=1e-6)
