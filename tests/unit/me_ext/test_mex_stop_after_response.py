"""The target's check list stops on the mediated IKE_SA_INIT (docs/protocol.md §8) after its IKE_SA_INIT
response is made, not between parsing the request and building the response; it has stopped before
the IKE_AUTH request is handled."""

from __future__ import annotations

from mex_net import make_net, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER, ExchangeType
from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.checklist import CheckList


def test_check_list_stops_after_the_ike_sa_init_response() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    lists: list[CheckList] = []  # bob's check list, taken when it answers the relayed ME_CONNECT
    seen: dict[int, list[bool]] = {ExchangeType.IKE_SA_INIT: [], ExchangeType.IKE_AUTH: []}
    queue = bob.engine.send

    def send(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if not lists:
            lists.extend(cl for cid in bob.ext.sessions if (cl := bob.ext.checks.get(cid)) is not None)
        msg = decode_message(data[4:] if data.startswith(NON_ESP_MARKER) else data)
        if msg.is_response and int(msg.exchange) in seen and lists:
            seen[int(msg.exchange)].append(lists[0].finished)
        queue(data, local, remote)

    bob.engine.send = send  # type: ignore[method-assign]
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool((alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
                                    or alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
    assert len(lists) == 1
    # the mediated IKE_SA_INIT response (bob's mediation SA's own IKE_SA_INIT came before the list existed)
    assert seen[ExchangeType.IKE_SA_INIT] == [False], seen
    assert seen[ExchangeType.IKE_AUTH] and all(seen[ExchangeType.IKE_AUTH]), seen
    assert lists[0].finished
    assert not bob.ext.sessions and not bob.ext._stopping  # the session ended with the stop
