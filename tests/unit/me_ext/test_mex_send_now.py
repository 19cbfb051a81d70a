"""The adapter's immediate send (MediationClientConfig.send_now): every connectivity check and check
answer goes through it when it is set, none waits in the engine's queue with the turn's other datagrams
(the ME_CONNECT response built after the checks start); the mediated setup completes as without it."""

from __future__ import annotations

from dataclasses import replace

from mex_net import make_net, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER
from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.checks import is_connectivity_check


def _is_check(data: bytes) -> bool:
    return data.startswith(NON_ESP_MARKER) and is_connectivity_check(decode_message(data[4:]))


def test_checks_and_answers_leave_through_send_now() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    now_sent: dict[str, list[bytes]] = {"alice": [], "bob": []}
    queued_checks: dict[str, int] = {"alice": 0, "bob": 0}
    for name in ("alice", "bob"):
        node = net.nodes[name]
        queue = node.engine.send

        def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int], name: str = name,
                     queue=queue) -> None:  # type: ignore[no-untyped-def]
            now_sent[name].append(data)
            queue(data, local, remote)  # the in-memory net delivers from the engine's queue

        def queued(data: bytes, local: tuple[str, int], remote: tuple[str, int], name: str = name,
                   queue=queue) -> None:  # type: ignore[no-untyped-def]
            queued_checks[name] += _is_check(data)
            queue(data, local, remote)

        node.engine.send = queued  # type: ignore[method-assign]
        node.ext.config = replace(node.ext.config, send_now=send_now)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool((alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
                                    or alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
    # alice's check and bob's answer to it at least, each through the immediate send, and only checks
    assert now_sent["alice"] and now_sent["bob"], now_sent
    assert all(_is_check(d) for sent in now_sent.values() for d in sent)
    assert queued_checks == {"alice": 0, "bob": 0}
