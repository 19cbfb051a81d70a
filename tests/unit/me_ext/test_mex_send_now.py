"""The adapter's immediate send (MediationClientConfig.send_now): every connectivity check and check
answer goes through it when it is set, none waits in the engine's queue with the turn's other datagrams
(the ME_CONNECT response built after the checks start), and so does an ME_CONNECT request made while a
datagram is processed (the target's own ME_CONNECT, made before its response to the relayed one);
responses never do. The server's (MediationServer send_now) carries the ME_CONNECTs it relays. The
mediated setup completes as without it."""

from __future__ import annotations

from dataclasses import replace

from mex_net import make_net, me_connect_request, mediate, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER
from core_ike.me.checks import is_connectivity_check


def _is_check(data: bytes) -> bool:
    return data.startswith(NON_ESP_MARKER) and is_connectivity_check(decode_message(data[4:]))


def test_checks_and_answers_leave_through_send_now() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    now_sent: dict[str, list[bytes]] = {"alice": [], "bob": [], "ms": []}
    queued_checks: dict[str, int] = {"alice": 0, "bob": 0, "ms": 0}
    for name in ("alice", "bob", "ms"):
        node = net.nodes[name]
        queue = node.engine.send

        def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int], node=node) -> None:  # type: ignore[no-untyped-def]
            now_sent[node.name].append(data)
            net.put(node, data, local, remote)

        def queued(data: bytes, local: tuple[str, int], remote: tuple[str, int], name: str = name,
                   queue=queue) -> None:  # type: ignore[no-untyped-def]
            queued_checks[name] += _is_check(data)
            queue(data, local, remote)

        node.engine.send = queued  # type: ignore[method-assign]
        if name == "ms":
            node.ext.send_now = send_now
        else:
            node.ext.config = replace(node.ext.config, send_now=send_now)
    mediate(net)
    # alice's check and bob's answer to it at least, each through the immediate send; checks and requests only
    assert now_sent["alice"] and now_sent["bob"], now_sent
    assert all(_is_check(d) or me_connect_request(d) for sent in now_sent.values() for d in sent)
    assert queued_checks == {"alice": 0, "bob": 0, "ms": 0}
    # bob's own ME_CONNECT (made while the relayed one is processed); the server's two relayed ones
    assert sum(map(me_connect_request, now_sent["bob"])) == 1
    assert [me_connect_request(d) for d in now_sent["ms"]] == [True, True]
