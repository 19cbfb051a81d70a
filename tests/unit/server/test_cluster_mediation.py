"""Mediation across the servers of a cluster, in memory (sans-IO engines, NATs, a fake clock):
ME_CONNECT and its answer forwarded between two servers, a callback registered at server 1 fired when
the target registers at server 3, one registration per identity (newest wins, in the engine's order
whatever the servers' clocks say), failures forwarded, and the data relay of the requester's server for
two peers behind symmetric NATs at different servers."""

from __future__ import annotations

import json

from cluster_net import IDS, PEERS, SERVERS, ClusterNet, peer, server, up

from core_ike.constants import MeEndpointType
from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.endpoints import decode_endpoint
from mediation_server.cluster.core import SEQUENCE
from mediation_server.datarelay import RelayConfig


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
    bob_sa = net.nodes["ms2"].engine.find_sa(net.nodes["ms2"].ext.lookup(IDS["bob"]).sa_id)
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


def test_newest_wins_by_the_engines_order_when_the_servers_clocks_disagree() -> None:
    """ms1's clock is an hour ahead, ms2's an hour behind: alice registers at ms1, then at ms2. The
    later registration (at ms2) wins, though its server's clock says it is two hours older."""
    net = ClusterNet()
    server(net, "ms1", clock_offset=3600.0)
    server(net, "ms2", clock_offset=-3600.0)
    server(net, "ms3")
    peer(net, "alice", ["ms1"], ["bob"])
    up(net, "alice")
    first = net.nodes["ms1"].ext.registry.lookup(IDS["alice"])
    assert first is not None and first.order > 0
    net.nodes.pop("alice")
    peer(net, "alice", ["ms2"], ["bob"])
    up(net, "alice")
    net.run(5.0)
    second = net.nodes["ms2"].ext.registry.lookup(IDS["alice"])
    assert second is not None and second.since < first.since  # the clocks say the opposite of the truth
    assert second.order > first.order
    assert _online(net, "ms2") == [IDS["alice"]] and _online(net, "ms1") == []
    assert [o.identity for o in net.nodes["ms1"].of(mev.PeerOffline)] == [IDS["alice"]]
    for s in ("ms1", "ms3"):
        assert net.nodes[s].ext.cluster.where(IDS["alice"]).server == "ms2"


def test_a_rival_up_before_our_number_is_decided_when_the_number_comes() -> None:
    """ms1 hears ms2's "up" for alice (number 5000) while its own registration of alice has no number yet;
    nothing is torn down until the number comes: lower -> ms1 lets alice go."""
    net = ClusterNet()
    ms1 = server(net, "ms1")
    server(net, "ms2")
    peer(net, "alice", ["ms1"], ["bob"])
    net.engine_up = False  # ms1's "up" for alice waits for the engine
    up(net, "alice")
    net.engine_up = True
    rec = ms1.ext.registry.lookup(IDS["alice"])
    assert rec is not None and rec.order == 0
    # the engine connection comes back (redis_bus.py): alice's number is asked for again
    ms1.ext.cluster.reset()
    ms1.ext.sync_to([])
    (out,) = ms1.ext.cluster.take_outbox()
    assert out[0] == SEQUENCE and IDS["alice"].encode() in out[1]
    ms1.ext.on_cluster_message(b'{"t":"up","id":"%s","ep":null,"seq":5000,"srv":"ms2"}' % IDS["alice"].encode(),
                               net.now)
    assert _online(net, "ms1") == [IDS["alice"]]  # undecided: kept
    ms1.ext.on_sequenced(4999, net.now)  # older than ms2's
    assert _online(net, "ms1") == []
    assert ms1.ext.cluster.where(IDS["alice"]).server == "ms2"


def test_symmetric_nats_at_different_servers_connect_through_the_requesters_relay() -> None:
    """alice at ms1 and bob at ms2, both behind symmetric NATs: ms1 (alice's, the requester's server)
    allocates the relay and adds bob's RELAYED endpoint to the request it forwards; ms2 passes it on
    unchanged and adds no relay of its own; the answer brings alice's RELAYED endpoint from ms1; the
    mediated IKE_SA and CHILD_SA run through ms1's relay ports."""
    net = ClusterNet(latency=0.01)
    cfg = RelayConfig(ports=(50000, 50099))
    for s in ("ms1", "ms2", "ms3"):
        server(net, s, relay=cfg)
    alice = peer(net, "alice", ["ms1"], ["bob"], symmetric=True)
    bob = peer(net, "bob", ["ms2"], ["alice"], symmetric=True)
    up(net, "alice", "bob")
    assert net.nodes["ms1"].ext.cluster.where(IDS["bob"]).relay  # bob's "up" says he negotiated the relay
    alice.ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed), alice.of(mev.MediationFailed)
    (alloc,) = net.nodes["ms1"].of(mev.RelayAllocated)
    assert (alloc.a, alloc.b) == (IDS["alice"], IDS["bob"])
    assert not net.nodes["ms2"].of(mev.RelayAllocated) and not net.nodes["ms3"].of(mev.RelayAllocated)
    # the forwarded request carries bob's RELAYED endpoint on ms1, and only that one
    fwd = [d for n, ch, d in net.cluster_log if n == "ms1" and ch.endswith("ms2") and b'"connect"' in d]
    assert len(fwd) == 1
    eps = [decode_endpoint(bytes.fromhex(e)) for e in json.loads(fwd[0])["eps"]]
    relayed = [e for e in eps if e.type == MeEndpointType.RELAYED]
    assert [(e.address, e.port) for e in relayed] == [(SERVERS["ms1"], alloc.b_port)]
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == (SERVERS["ms1"], alloc.a_port)
    (ike_b,) = [e for e in bob.of(ev.IkeSaEstablished) if e.name == "alice"]
    assert ike_b.remote == (SERVERS["ms1"], alloc.b_port)
    (ca,), (cb,) = alice.of(ev.ChildSaEstablished), bob.of(ev.ChildSaEstablished)
    assert ca.keys.spi_out == cb.keys.spi_in
    (st,) = net.nodes["ms1"].ext.relay.status(net.now)
    assert st.in_use and st.bytes_a_to_b > 0 and st.bytes_b_to_a > 0
    assert st.b_latched is not None and st.b_latched[0] == PEERS["bob"][1]  # bob's NAT, as ms2 saw it
    # bob leaves ms2 while the relay carries the tunnel: ms1 keeps it (datarelay.py "Lifetime")
    bob_sa = net.nodes["ms2"].engine.find_sa(net.nodes["ms2"].ext.lookup(IDS["bob"]).sa_id)
    net.nodes["ms2"].engine.terminate(bob_sa, net.now)
    net.run(2.0)
    assert net.nodes["ms1"].ext.cluster.where(IDS["bob"]) is None and len(net.nodes["ms1"].ext.relay) == 1
