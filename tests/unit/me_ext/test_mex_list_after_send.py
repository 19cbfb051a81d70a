"""The initiator's ME_CONNECT leaves before its check list is made (the `up`'s critical path holds only
what the request needs: connect ID, key, endpoints); the list exists before anything else is read, so
the relayed answer, which can only come after the request left, always finds it (docs/protocol.md §4.4).
A request built later, when the mediation SA's exchange in flight ends, gets its list as well."""

from __future__ import annotations

from dataclasses import replace

from mex_net import make_net, me_connect_request, mediate, register

from core_ike.ike.tasks.informational import Dpd
from core_ike.me import events as mev


def test_request_leaves_before_the_check_list_is_made() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    alice = net.nodes["alice"]
    lists_when_sent: list[int] = []

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if me_connect_request(data):
            lists_when_sent.append(len(alice.ext.checks))
        net.put(alice, data, local, remote)

    alice.ext.config = replace(alice.ext.config, send_now=send_now)
    att = alice.ext.connect("bob", net.now)
    # sent inside connect() with no list yet; the list is there when connect() returns
    assert lists_when_sent == [0]
    assert att.connect_id is not None and alice.ext.checks.get(att.connect_id) is not None
    net.run(5.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    assert alice.of(mev.MediatedEstablished) and not alice.of(mev.MediationFailed)
    sent = alice.of(mev.MeConnectSent)
    assert len(sent) == 1 and sent[0].connect_id == att.connect_id.hex()


def test_request_built_behind_an_exchange_in_flight_gets_its_list() -> None:
    net = make_net(latency=0.005)
    register(net)
    alice = net.nodes["alice"]
    sa = alice.ext.mediation_sa("medsrv")
    assert sa is not None
    # an INFORMATIONAL exchange in flight on the mediation SA: the ME_CONNECT waits and is built when it ends
    sa.queue_task(Dpd(), net.now)
    sa.initiate_next(net.now)
    assert sa.outstanding is not None
    att = alice.ext.connect("bob", net.now)
    assert att.connect_id is None and len(alice.ext.checks) == 0  # not built yet
    mediate(net)
    assert att.connect_id is not None and len(alice.of(mev.MeConnectSent)) == 1
