"""Which ME_CONNECT leaves first when one datagram makes two (docs/protocol.md §4.1): the one somebody waits
for. The target's own ME_CONNECT (step 6) before its response to the relayed request (step 5); the
server's relayed request (steps 4 and 7) before its response to the request it relays (step 2). In-memory
net, fake clock: the order on the wire within one instant."""

from __future__ import annotations

from mex_net import B_IP, make_net, mediate, register

from core_ike.constants import NON_ESP_MARKER

ME_CONNECT = 240  # [ME] §4: exchange type
RESPONSE_FLAG = 0x20  # RFC 7296 3.1


def _me_connects(net, sender: str) -> list[tuple[float, str, bool]]:  # type: ignore[no-untyped-def]
    """(time, destination IP, is a response) of every ME_CONNECT `sender` put on the wire, in order."""
    out = []
    for t, who, _src, dst, data in net.wire:
        ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
        if who == sender and len(ike) > 19 and ike[18] == ME_CONNECT:
            out.append((t, dst[0], bool(ike[19] & RESPONSE_FLAG)))
    return out


def _setup():  # type: ignore[no-untyped-def]
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    start = len(net.wire)
    mediate(net)
    net.wire = net.wire[start:]
    return net


def test_the_target_sends_its_own_me_connect_before_its_response() -> None:
    bob = _me_connects(_setup(), "bob")
    assert [r for _, _, r in bob[:2]] == [False, True], bob  # own request, then the response
    assert bob[0][0] == bob[1][0]  # both made for the relayed request, in the same instant


def test_the_server_relays_a_request_or_an_answer_before_responding_to_it() -> None:
    ms = _me_connects(_setup(), "ms")
    first = [(dst == B_IP, resp) for t, dst, resp in ms if t == ms[0][0]]
    assert first == [(True, False), (False, True)], ms  # alice's request to bob, then the response to alice
    later = [m for m in ms if m[0] > ms[0][0]]
    second = [(dst == B_IP, resp) for t, dst, resp in later if t == later[0][0]]
    assert second == [(False, False), (True, True)], ms  # bob's answer to alice, then the response to bob
