"""Time from connect() to the mediated IKE_SA on the simulation's clock (20 ms one way on every hop, no
processing time): the protocol's floor is 5 round trips (ME_CONNECT relayed both ways, one check round
trip, IKE_SA_INIT, IKE_AUTH); the client may add only the margin it gives the better host-host pair,
which never answers between two NATs (docs/protocol.md §8)."""

from __future__ import annotations

import pytest

from core_ike.me import events as mev
from tests.unit.me_ext.mex_net import make_net, register

ONE_WAY = 0.020


def _setup_time(**kw: object) -> float:
    net = make_net(latency=ONE_WAY, **kw)  # type: ignore[arg-type]
    register(net)
    alice = net.nodes["alice"]
    t0 = net.now
    alice.ext.connect("bob", t0)
    net.run(10.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    (_done,) = alice.of(mev.MediatedEstablished)
    assert not alice.of(mev.MediationFailed)
    return net.now - t0


def test_mediated_setup_takes_five_round_trips_plus_the_margin() -> None:
    rtt = 2 * ONE_WAY
    # the relay pair (our server's extension) is checked too but ranks last: it never delays the choice
    assert _setup_time() == pytest.approx(5 * rtt + 0.005, abs=1e-6)


def test_without_the_relay_candidate_the_same() -> None:
    from core_ike.me.checklist import CheckListConfig
    from tests.unit.me_ext.mex_net import client_config

    cfg = client_config(relay=False, checks=CheckListConfig(transaction_timeout=5.0, responder_timeout=10.0))
    assert _setup_time(ccfg=cfg) == pytest.approx(5 * 2 * ONE_WAY + 0.005, abs=1e-6)
