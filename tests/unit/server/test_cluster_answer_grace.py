"""The answer's head start across servers (docs/protocol.md §4.4), on the simulation clock: alice at
ms1 asks for bob at ms2; bob's answer comes back through the cluster.  A strongSwan alice (no
IMPL_VENDOR_ID at ms1) may handle the relayed answer before ms1's response to her own ME_CONNECT and
then never check, so ms1 holds the forwarded answer until ANSWER_GRACE after that response, as it
does for an answer from a peer of its own; our own client gets it at once."""

from __future__ import annotations

from cluster_net import IDS, ClusterNet, peer, server, up

from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.tasks import MeSaState
from mediation_server.relay import ANSWER_GRACE


def _answer_after(foreign: bool) -> float:
    """Seconds from alice's ME_CONNECT to her checks starting (the answer reached her)."""
    net = ClusterNet()  # no latency: without the head start the answer would arrive at once
    for s in ("ms1", "ms2"):
        server(net, s)
    alice = peer(net, "alice", ["ms1"], ["bob"])
    bob = peer(net, "bob", ["ms2"], ["alice"])
    up(net, "alice", "bob")
    ms1 = net.nodes["ms1"]
    if foreign:  # as ms1 records a strongSwan peer: no IMPL_VENDOR_ID in its IKE_SA_INIT
        for sa in ms1.engine.ike_sas():
            if sa.peer_id is not None and str(sa.peer_id) == IDS["alice"]:
                sa.extension(MeSaState).ours = False
    alice.ext.connect("bob", net.now)
    net.run(40.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed) and alice.of(ev.ChildSaEstablished)
    # alice's request forwarded to ms2, bob's answer forwarded back and relayed to alice by ms1
    assert [e.response for _, e in ms1.events if isinstance(e, mev.ConnectRelayed)] == [False, True]
    assert [e.response for _, e in net.nodes["ms2"].events if isinstance(e, mev.ConnectRelayed)] == [False, True]
    sent, started = alice.first(mev.MeConnectSent), alice.first(mev.ChecksStarted)
    assert sent is not None and started is not None
    return started[0] - sent[0]


def test_a_forwarded_answer_waits_for_a_strongswan_requester_only() -> None:
    assert _answer_after(foreign=False) < ANSWER_GRACE
    assert _answer_after(foreign=True) >= ANSWER_GRACE
