"""Mediation across the servers of a cluster, in memory (sans-IO engines, NATs, a fake clock):
ME_CONNECT and its answer forwarded between two servers, a callback registered at server 1 fired when
the target registers at server 3, one registration per identity (newest wins), failures forwarded."""

from __future__ import annotations

from cluster_net import IDS, ClusterNet, peer, server, up

from core_ike.ike import events as ev
from core_ike.me import events as mev


def _net() -> ClusterNet:
    net = ClusterNet()
    for s in ("ms1", "ms2", "ms3"):
        server(net, s)
    return net


def _online(net: ClusterNet, name: str) -> list[str]:
    return [p.identity for p in net.nodes[name].ext.status()]


def test_alice_at_server_1_reaches_bob_at_server_2_directly() -> None:
    net = _net()
    alice = peer(net, "alice", ["ms1"], ["bob"])
    bob = peer(net, "bob", ["ms2"], ["alice"])
    up(net, "alice", "bob")
    assert _online(net, "ms1") == [IDS["alice"]] and _online(net, "ms2") == [IDS["bob"]]
    assert net.nodes["ms3"].ext.cluster.where(IDS["bob"]).server == "ms2"
    alice.ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed), alice.of(mev.MediationFailed)
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == ("203.0.113.2", 4500)  # bob's NAT: a direct path, not through a server
    (ca,), (cb,) = alice.of(ev.ChildSaEstablished), bob.of(ev.ChildSaEstablished)
    assert ca.keys.spi_out == cb.keys.spi_in
    # the request went alice -> ms1 -> (engine) -> ms2 -> bob, the answer bob -> ms2 -> ms1 -> alice
    assert [r.response for r in net.nodes["ms1"].of(mev.ConnectRelayed)] == [False, True]
    assert [r.response for r in net.nodes["ms2"].of(mev.ConnectRelayed)] == [False, True]
    assert not net.nodes["ms3"].of(mev.ConnectRelayed)


def test_callback_at_server_1_fires_when_bob_registers_at_server_3() -> None:
    net = _net()
    alice = peer(net, "alice", ["ms1"], ["bob"])
    bob = peer(net, "bob", ["ms3"], ["alice"])
    up(net, "alice")
    alice.ext.connect("bob", net.now)
    net.run(2.0)
    assert alice.of(mev.PeerNotOnline)
    assert net.nodes["ms1"].ext.registry.waiting_for(IDS["bob"]) == [IDS["alice"]]
    up(net, "bob")
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)))
    (sent,) = net.nodes["ms1"].of(mev.CallbackSent)
    assert (sent.requester, sent.online) == (IDS["alice"], IDS["bob"])
    assert alice.of(mev.CallbackReceived)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
    assert net.nodes["ms1"].ext.registry.waiting_for(IDS["bob"]) == []


def test_newest_registration_wins_across_servers() -> None:
    net = _net()
    peer(net, "alice", ["ms1"], ["bob"])
    up(net, "alice")
    assert _online(net, "ms1") == [IDS["alice"]]
    net.run(1.0)
    # alice registers again, now at server 2 (a second client config pointing elsewhere)
    net.nodes.pop("alice")
    peer(net, "alice", ["ms2"], ["bob"])
    up(net, "alice")
    net.run(5.0)
    assert _online(net, "ms2") == [IDS["alice"]]
    assert _online(net, "ms1") == []  # the older server tore its SA down
    off = net.nodes["ms1"].of(mev.PeerOffline)
    assert [o.identity for o in off] == [IDS["alice"]]
    for s in ("ms1", "ms3"):
        assert net.nodes[s].ext.cluster.where(IDS["alice"]).server == "ms2"


def test_target_gone_at_its_server_fails_back_to_the_requester() -> None:
    net = _net()
    alice = peer(net, "alice", ["ms1"], ["bob"])
    peer(net, "bob", ["ms2"], ["alice"])
    up(net, "alice", "bob")
    net.engine_up = False  # bob leaves while server 1 does not hear it
    bob_sa = next(iter(net.nodes["ms2"].ext._sas.values()))
    net.nodes["ms2"].engine.terminate(bob_sa, net.now)
    net.run(2.0)
    net.engine_up = True
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(mev.MediationFailed) or alice.of(mev.PeerNotOnline)))
    assert alice.of(mev.MediationFailed) or alice.of(mev.PeerNotOnline)
    assert not alice.of(ev.ChildSaEstablished)


def test_pending_callback_survives_its_server() -> None:
    """alice waits at server 1 for bob; server 1 dies; alice registers at server 2; bob registers at
    server 3: server 2 fires alice's callback (its registration came over the cluster)."""
    net = _net()
    alice = peer(net, "alice", ["ms1", "ms2"], ["bob"])
    bob = peer(net, "bob", ["ms3"], ["alice"])
    up(net, "alice")
    alice.ext.connect("bob", net.now)
    net.run(2.0)
    assert alice.of(mev.PeerNotOnline)
    for s in ("ms2", "ms3"):
        assert net.nodes[s].ext.registry.waiting_for(IDS["bob"]) == [IDS["alice"]]
    # server 1 is gone (its engine connection with it): the others forget its peers
    del net.nodes["ms1"]
    for s in ("ms2", "ms3"):
        net.nodes[s].ext.cluster.server_gone("ms1")
    for sa in list(alice.engine.ike_sas()):
        alice.engine.terminate(sa, net.now)
    net.run(1.0)
    alice.engine.initiate("medsrv", now=net.now, remote=("198.51.100.2", 500))  # the next in its list
    net.run(5.0)
    assert [p.identity for p in net.nodes["ms2"].ext.status()] == [IDS["alice"]]
    up(net, "bob")
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)))
    (sent,) = net.nodes["ms2"].of(mev.CallbackSent)
    assert (sent.requester, sent.online) == (IDS["alice"], IDS["bob"])
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
    # fired once: the other copies are gone
    assert net.nodes["ms3"].ext.registry.waiting_for(IDS["bob"]) == []
