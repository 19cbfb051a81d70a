"""ME extension failure paths: every connect() ends in a clear event within a bounded time."""

from __future__ import annotations

from mex_net import B_PUB, IDS, client_config, make_net, register

from core_ike.constants import NotifyType
from core_ike.ike import events as ev
from core_ike.me import events as mev
from mediation_server.registry import Authorizer, Policy, Registry


def _failed(net, name: str = "alice"):  # type: ignore[no-untyped-def]
    return net.nodes[name].of(mev.MediationFailed)


def test_offline_peer_callback_then_connects() -> None:
    net = make_net()
    register(net, "alice")
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    alice.ext.connect("bob", net.now)
    net.run(1.0)
    (off,) = alice.of(mev.PeerNotOnline)
    assert off.peer == IDS["bob"]
    assert ms.ext.registry.waiting_for(IDS["bob"]) == [IDS["alice"]]
    assert alice.ext.status().connections[0].state == "callback"
    bob.engine.initiate("medsrv", now=net.now)  # bob comes online: the server fires the callback
    net.run(5.0, until=lambda: bool(alice.of(ev.ChildSaEstablished)))
    assert ms.of(mev.CallbackSent) and alice.of(mev.CallbackReceived)
    assert alice.of(mev.MediatedEstablished) and bob.of(ev.ChildSaEstablished)
    assert not _failed(net)


def test_offline_peer_never_comes_fails_at_callback_deadline() -> None:
    net = make_net(ccfg=client_config(callback_timeout=10.0))
    register(net, "alice")
    t0 = net.now
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(_failed(net)))
    (f,) = _failed(net)
    assert f.reason.startswith("peer offline") and net.now - t0 <= 10.0 + 1e-6


def test_symmetric_nats_fail_with_checks_failed_within_deadline() -> None:
    net = make_net(symmetric=(True, True))
    register(net)
    t0 = net.now
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(_failed(net)))
    (f,) = _failed(net)
    assert f.reason.startswith("checks failed") and "203.0.113.2" in f.reason  # lists the tried pairs
    assert 5.0 - 1e-6 <= net.now - t0 <= 5.0 + 0.1  # transaction_timeout of the test config
    assert not net.nodes["alice"].of(ev.IkeSaEstablished)[1:]  # only the mediation SA
    # bob's list ends too (responder timeout), nothing stays behind
    net.run(15.0)
    assert len(net.nodes["bob"].ext.checks) == 0 and net.nodes["bob"].of(mev.ChecksEnded)


def test_one_symmetric_nat_fails_cleanly_too() -> None:
    net = make_net(symmetric=(True, False))
    register(net)
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(_failed(net) or net.nodes["alice"].of(mev.MediatedEstablished)))
    assert _failed(net) or net.nodes["alice"].of(mev.MediatedEstablished)


def test_unauthorized_pair_refused_and_reported() -> None:
    reg = Registry(authorizer=Authorizer(Policy.ALLOW_LIST))
    net = make_net(registry=reg, ccfg=client_config(callback_timeout=5.0))
    register(net)
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(_failed(net)))
    (r,) = net.nodes["ms"].of(mev.ConnectRefused)
    assert r.notify == NotifyType.ME_CONNECT_FAILED and "may not reach" in r.reason
    (f,) = _failed(net)
    assert f.reason.startswith("peer offline")  # ME_CONNECT_FAILED cannot say more (strongSwan wire)
    assert not net.nodes["bob"].of(mev.MediationRequested)


def test_server_unreachable() -> None:
    net = make_net(with_server=False, ccfg=client_config(server_timeout=8.0))
    t0 = net.now
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(_failed(net)))
    (f,) = _failed(net)
    assert f.reason.startswith("mediation server unreachable") and net.now - t0 <= 8.0 + 1e-6


def test_authentication_failed_at_server() -> None:
    net = make_net(psk_alice="not-the-right-secret")
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(_failed(net)))
    (f,) = _failed(net)
    assert f.reason.startswith("authentication failed"), f.reason


def test_server_without_mediation_is_refused() -> None:
    net = make_net(server_ext=False)
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(_failed(net)))
    (f,) = _failed(net)
    assert "server did not return a ME_MEDIATION" in f.reason


def test_child_in_mediation_ike_auth_gets_no_additional_sas() -> None:
    net = make_net(med_child=True)
    register(net)
    alice, ms = net.nodes["alice"], net.nodes["ms"]
    (cf,) = alice.of(ev.ChildSaFailed)
    assert "NO_ADDITIONAL_SAS" in cf.reason
    assert alice.of(mev.MediationSaUp) and IDS["alice"] in [p.identity for p in ms.ext.status()]
    assert not ms.of(ev.ChildSaEstablished)


def test_race_relayed_answer_before_own_response() -> None:
    """docs/protocol.md §4.4: the relayed ME_RESPONSE reaches alice before the MS's answer to her request."""
    net = make_net()
    register(net)
    held: list[float] = []

    def hook(sender: str, data: bytes, src, dst):  # type: ignore[no-untyped-def]
        # server -> alice, ME_CONNECT (240) response (flag R): hold the first one back
        if sender == "ms" and dst[0] == "203.0.113.1" and data[4 + 18] == 240 and data[4 + 19] & 0x20 and not held:
            held.append(net.now)
            return 0.3
        return 0.0

    net.hook = hook
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    alice.ext.connect("bob", net.now)
    net.run(10.0, until=lambda: bool(alice.of(ev.ChildSaEstablished)))
    assert held and alice.of(mev.MediatedEstablished) and bob.of(ev.ChildSaEstablished) and not _failed(net)
    t_checks = alice.first(mev.ChecksStarted)
    assert t_checks is not None and t_checks[0] < held[0] + 0.3  # answer processed before the ack
    net.run(2.0)
    assert alice.ext.status().connections[0].state == "established"


def test_mediated_peer_address_is_public_not_server() -> None:
    net = make_net()
    register(net)
    net.nodes["alice"].ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool(net.nodes["bob"].of(ev.ChildSaEstablished)))
    sas = {s.name: s for s in net.nodes["alice"].engine.ike_sas()}
    assert sas["bob"].remote == (B_PUB, 4500) and sas["medsrv"].remote[0] == "198.51.100.1"
