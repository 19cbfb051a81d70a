"""A relayed ME_CONNECT that reaches a peer before the IKE_AUTH response of its mediation SA (the server
sends it right after that response; the network reorders them): the peer holds it and answers it once
the response has authenticated the server (core_ike/ike/task_manager.py, RFC 7296 2.3 and 1.2), and
the mediation completes. Fake clock, the server's IKE_AUTH response to alice delayed on the wire."""

from __future__ import annotations

from mex_net import A_PUB, IDS, make_net, register

from core_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag
from core_ike.ike import events as ev
from core_ike.ike.identity import Identity
from core_ike.me import events as mev

DELAY = 0.05


def _kind(data: bytes) -> tuple[int, bool]:
    ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
    return ike[18], bool(ike[19] & HeaderFlag.RESPONSE)


def test_an_me_connect_before_the_ike_auth_response_is_answered_once_established() -> None:
    net = make_net(latency=0.005)
    register(net, "bob")
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    arrivals: dict[tuple[int, bool], float] = {}  # when the server's messages to alice reach her, first ones

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        if sender == "ms" and dst[0] == A_PUB:
            kind = _kind(data)
            extra = DELAY if kind == (ExchangeType.IKE_AUTH, True) else 0.0
            arrivals.setdefault(kind, net.now + net.latency + extra)
            return extra
        return 0.0

    net.hook = hook
    alice.engine.initiate("medsrv", now=net.now)
    online = Identity.parse(IDS["alice"]).canonical()
    net.run(1.0, until=lambda: ms.ext.registry.lookup(online) is not None)
    assert not alice.of(ev.IkeSaEstablished)
    bob.ext.connect("alice", net.now)  # relayed to alice while her IKE_AUTH response is still on the wire
    net.run(5.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(bob.of(mev.MediationFailed)))
    # the relayed request reached alice before the response it followed
    assert arrivals[(ExchangeType.ME_CONNECT, False)] < arrivals[(ExchangeType.IKE_AUTH, True)]
    assert not bob.of(mev.MediationFailed), bob.of(mev.MediationFailed)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
    assert not alice.of(mev.MediationFailed)
