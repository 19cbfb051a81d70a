"""The end of the mediation SA answers the ME_CONNECT in flight with its reason (docs/architecture.md
"Tasks when the IKE_SA ends": the IKE_SA's end tells every task it carried), and a request waiting behind it in the outbox is
told too, none handed to the ended SA."""

from __future__ import annotations

from mex_net import make_net, me_connect_request, register

from core_ike.ike import events as ev
from core_ike.ike.sa import IkeSa
from core_ike.ike.state import IkeState
from core_ike.me import events as mev


def test_server_deletes_the_mediation_sa_while_our_me_connect_is_in_flight() -> None:
    net = make_net()
    register(net)
    alice, ms = net.nodes["alice"], net.nodes["ms"]
    (med,) = alice.engine.ike_sas()
    net.hook = lambda sender, data, src, dst: None if sender == "alice" and me_connect_request(data) else 0.0
    alice.ext.connect("bob", net.now)
    net.run(0.1)
    assert med.outstanding is not None and med.outstanding.exchange == 240  # ME_CONNECT, unanswered
    net.hook = None
    (at_ms,) = (sa for sa in ms.engine.ike_sas() if sa.remote[0] != net.nodes["bob"].ip
                and sa.peer_id is not None and "alice" in str(sa.peer_id))
    t0 = net.now
    ms.engine.terminate(at_ms, now=net.now)
    net.run(5.0, until=lambda: bool(alice.of(mev.MediationFailed)))
    (f,) = alice.of(mev.MediationFailed)
    assert f.reason == "mediation server unreachable: deleted by peer" and net.now - t0 < 0.1
    assert med.state is IkeState.DESTROYED and med.queue == [] and med.outstanding is None
    assert alice.ext.outbox.pending(med) == 0


def test_attempt_given_up_while_the_mediated_ike_sa_connects_is_reported_once() -> None:
    """The mediation client gives the attempt up (here: the user cancels it) while the mediated IKE_SA is
    being established: MediationFailed says why; the CHILD_SA asked of that IKE_SA does not say it again
    (a status writer would replace the attempt's reason by the CHILD_SA's)."""
    net = make_net()
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)

    def mediated() -> IkeSa | None:
        return next((sa for sa in alice.engine.ike_sas() if sa.config.name != "medsrv"), None)

    net.run(5.0, until=lambda: mediated() is not None)
    sa = mediated()
    assert sa is not None and sa.state is IkeState.CONNECTING
    alice.ext.cancel("bob", net.now)
    net.run(1.0)
    (f,) = alice.of(mev.MediationFailed)
    assert f.reason == "cancelled by user"
    assert sa.state is IkeState.DESTROYED and not alice.of(ev.ChildSaFailed) and not alice.of(ev.IkeSaFailed)
