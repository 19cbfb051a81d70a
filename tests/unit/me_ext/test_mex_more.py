"""ME extension: same-NAT peers, forwarded ME_CONNECT_FAILED, re-registration, rekeyed mediation SA."""

from __future__ import annotations

from mex_net import A_PUB, B_SAME, IDS, make_net, register

from core_ike.codec.message import Message
from core_ike.ike import events as ev
from core_ike.ike.context import Task
from core_ike.ike.extension import Extension
from core_ike.ike.sa import IkeSa
from core_ike.me import events as mev
from core_ike.me.connect import build_connect_failed
from core_ike.me.tasks import MeConnectResponder, MeOutbox


def _connect(net) -> None:  # type: ignore[no-untyped-def]
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) or alice.of(mev.MediationFailed)))


def test_behind_same_nat_host_pair_wins_and_callback() -> None:
    net = make_net(same_nat=True)
    register(net, "alice")
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    alice.ext.connect("bob", net.now)
    net.run(1.0)
    assert alice.of(mev.PeerNotOnline)  # bob comes online later: callback path
    bob.engine.initiate("medsrv", now=net.now)
    net.run(10.0, until=lambda: bool(alice.of(ev.ChildSaEstablished)))
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == (B_SAME, 4500)  # host-to-host, not through the NAT
    (up_b,) = bob.of(mev.MediationSaUp)
    assert up_b.srflx is not None and up_b.srflx[0] == A_PUB and up_b.srflx[1] != 4500


class _Refuser(Extension):
    """A target that answers every relayed ME_CONNECT with ME_CONNECT_FAILED (docs/protocol.md §4.1 step 5)."""

    def __init__(self) -> None:
        self.outbox = MeOutbox()

    def tasks(self, sa: IkeSa, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
        if exchange == 240 and not initiator:
            return [MeConnectResponder(lambda s, m, now: build_connect_failed(), self.outbox)]
        return []


def test_target_refusal_forwarded_to_initiator() -> None:
    net = make_net()
    register(net)
    net.nodes["bob"].engine.extensions = [_Refuser()]
    _connect(net)
    (f,) = net.nodes["alice"].of(mev.MediationFailed)
    assert f.reason.startswith("refused") and IDS["bob"] in f.reason


def test_new_registration_replaces_old_mediation_sa() -> None:
    net = make_net()
    register(net)
    ms = net.nodes["ms"]
    old = ms.ext.lookup(IDS["alice"]).sa_id
    alice = net.nodes["alice"]
    alice.engine.config("medsrv").unique = "no"  # a second, independent mediation SA from alice
    alice.engine.initiate("medsrv", now=net.now, remote=("198.51.100.1", 500))
    net.run(5.0)
    rec = ms.ext.lookup(IDS["alice"])
    assert rec.sa_id != old and ms.engine.find_sa(old) is None
    (on,) = [e for e in ms.of(mev.PeerOnline) if e.replaced is not None]
    assert on.replaced == old and len(ms.ext.status()) == 2


def test_rekeyed_mediation_sa_stays_registered_and_mediates() -> None:
    net = make_net()
    register(net)
    alice, ms = net.nodes["alice"], net.nodes["ms"]
    sa = alice.ext.mediation_sa("medsrv")
    alice.engine.rekey_ike(sa, now=net.now)
    net.run(2.0)
    new = alice.ext.mediation_sa("medsrv")
    assert new is not None and new.unique_id != sa.unique_id
    rec = ms.ext.lookup(IDS["alice"])
    assert rec is not None and ms.engine.find_sa(rec.sa_id) is not None
    assert not ms.of(mev.PeerOffline)
    _connect(net)
    assert alice.of(mev.MediatedEstablished)


def test_cancel_while_waiting_for_callback() -> None:
    net = make_net()
    register(net, "alice")
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(1.0)
    alice.ext.cancel("bob", net.now)
    net.run(0.1)
    (f,) = alice.of(mev.MediationFailed)
    assert f.reason == "cancelled by user"
    (conn,) = alice.ext.status().connections
    assert conn.state == "failed" and conn.reason == "cancelled by user"
    assert alice.ext.next_deadline() is None
