"""ME extension end to end in memory: mediation SAs, srflx, relay, checks, mediated IKE_SA."""

from __future__ import annotations

from mex_net import A_PUB, B_PUB, IDS, make_net, register

from core_ike.ike import events as ev
from core_ike.me import events as mev


def test_mediation_sas_learn_srflx() -> None:
    net = make_net()
    register(net)
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    (up_a,) = alice.of(mev.MediationSaUp)
    (up_b,) = bob.of(mev.MediationSaUp)
    assert up_a.srflx == (A_PUB, 4500) and up_b.srflx == (B_PUB, 4500)
    assert up_a.local == ("10.1.0.2", 4500)  # floated to 4500 ([ME] §3.1)
    peers = {p.identity: p for p in ms.ext.status()}
    assert peers[IDS["alice"]].endpoint == (A_PUB, 4500)
    assert peers[IDS["bob"]].endpoint == (B_PUB, 4500)
    assert not ms.of(ev.ChildSaEstablished)
    st = alice.ext.status()
    assert st.mediation[0].srflx == (A_PUB, 4500) and st.mediation[0].state == "ESTABLISHED"


def _connect(net, until_child: bool = True) -> float:  # type: ignore[no-untyped-def]
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    t0 = net.now
    alice.ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    return t0


def test_alice_connects_to_bob_directly_through_nats() -> None:
    net = make_net()
    register(net)
    t0 = _connect(net)
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    assert not alice.of(mev.MediationFailed), alice.of(mev.MediationFailed)
    (est,) = alice.of(mev.MediatedEstablished)
    # the mediated SA runs between the NATs' public addresses, not through the server
    assert est.local == ("10.1.0.2", 4500) and est.remote == (B_PUB, 4500)
    (ike_b,) = [e for e in bob.of(ev.IkeSaEstablished) if e.name == "alice"]
    assert ike_b.remote == (A_PUB, 4500)
    (ca,) = alice.of(ev.ChildSaEstablished)
    (cb,) = bob.of(ev.ChildSaEstablished)
    assert ca.encap and ca.remote == (B_PUB, 4500) and cb.remote == (A_PUB, 4500)
    assert ca.keys.spi_out == cb.keys.spi_in
    # four relayed exchanges: A->MS->B (request) and B->MS->A (response)
    relayed = ms.of(mev.ConnectRelayed)
    assert [r.response for r in relayed] == [False, True]
    # bob's list stopped on the mediated IKE_SA_INIT; alice's removed on success
    assert len(bob.ext.checks) == 0 and len(alice.ext.checks) == 0
    t_child = next(t for t, e in alice.events if isinstance(e, ev.ChildSaEstablished))
    assert t_child - t0 < 0.1  # charon: ~1.04 s at 0 ms
    st = alice.ext.status()
    (conn,) = st.connections
    assert conn.state == "established" and conn.selected is not None


def test_connect_brings_up_mediation_first() -> None:
    net = make_net(latency=0.020)
    register(net, "bob")
    t0 = _connect(net)
    alice = net.nodes["alice"]
    assert alice.of(mev.MediationSaUp) and alice.of(mev.MediatedEstablished)
    t_child = next(t for t, e in alice.events if isinstance(e, ev.ChildSaEstablished))
    assert t_child - t0 < 0.5


def test_latency_20ms_time_to_child() -> None:
    net = make_net(latency=0.020)
    register(net)
    t0 = _connect(net)
    alice = net.nodes["alice"]
    t_child = next(t for t, e in alice.events if isinstance(e, ev.ChildSaEstablished))
    assert t_child - t0 < 0.25 * 1.29  # the target vs charon's 1.29 s


def _answer_delay(foreign: bool) -> float:
    from core_ike.me.tasks import MeSaState

    net = make_net()
    register(net)
    alice, ms = net.nodes["alice"], net.nodes["ms"]
    if foreign:  # as if alice were a strongSwan peer: it did not announce our implementation Vendor ID
        for sa in ms.engine.ike_sas():
            if sa.peer_id is not None and str(sa.peer_id) == IDS["alice"]:
                sa.extension(MeSaState).ours = False
    _connect(net)
    sent = alice.first(mev.MeConnectSent)
    started = alice.first(mev.ChecksStarted)
    assert sent is not None and started is not None and alice.of(ev.ChildSaEstablished)
    return started[0] - sent[0]


def test_relayed_answer_waits_for_strongswan_peers_only() -> None:
    """docs/protocol.md §4.4: a charon may process the relayed answer before our response to its own ME_CONNECT
    and then never check; peers that are not ours get the answer ANSWER_GRACE later, ours at once."""
    from mediation_server.relay import ANSWER_GRACE

    assert _answer_delay(foreign=False) < ANSWER_GRACE
    assert _answer_delay(foreign=True) >= ANSWER_GRACE
