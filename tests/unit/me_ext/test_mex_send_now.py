"""The adapter's immediate send (MediationClientConfig.send_now): every connectivity check and check
answer goes through it when it is set, none waits in the engine's queue with the turn's other datagrams
(the ME_CONNECT response built after the checks start), and so does an ME_CONNECT request made while a
datagram is processed (the target's own ME_CONNECT, made before its response to the relayed one), and the
initiator's mediated IKE_SA_INIT request, which leaves before the initiator ties it to its attempt (without
an immediate send it waits in the engine's queue as before); responses never do. The server's
(MediationServer send_now) carries the ME_CONNECTs it relays. The mediated setup completes as without it."""

from __future__ import annotations

from dataclasses import replace

from mex_net import make_net, me_connect_request, mediate, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag
from core_ike.ike import events as ev
from core_ike.me.checks import is_connectivity_check


def _is_check(data: bytes) -> bool:
    return data.startswith(NON_ESP_MARKER) and is_connectivity_check(decode_message(data[4:]))


def _ike_sa_init_request(data: bytes) -> bool:
    ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
    return len(ike) > 19 and ike[18] == ExchangeType.IKE_SA_INIT and not ike[19] & HeaderFlag.RESPONSE


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
    assert all(_is_check(d) or me_connect_request(d) for name in ("bob", "ms") for d in now_sent[name])
    assert all(_is_check(d) or me_connect_request(d) or _ike_sa_init_request(d) for d in now_sent["alice"])
    assert sum(map(_ike_sa_init_request, now_sent["alice"])) == 1
    assert queued_checks == {"alice": 0, "bob": 0, "ms": 0}
    # bob's own ME_CONNECT (made while the relayed one is processed); the server's two relayed ones
    assert sum(map(me_connect_request, now_sent["bob"])) == 1
    assert [me_connect_request(d) for d in now_sent["ms"]] == [True, True]


def test_mediated_ike_sa_init_leaves_through_send_now_before_the_attempt_is_tied() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: one candidate pair
    register(net)
    alice = net.nodes["alice"]
    tied_at_send: list[bool] = []  # per IKE_SA_INIT request sent at once: its attempt tied to it yet
    queued_inits = 0

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if _ike_sa_init_request(data):
            tied_at_send.append(alice.ext.attempts["bob"].sa_id is not None)
        net.put(alice, data, local, remote)

    receive = alice.engine.receive

    def adapter_receive(data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        nonlocal queued_inits
        receive(data, local, remote, now)
        out = alice.engine.datagrams_to_send()  # what the daemon sends after the datagram's events
        queued_inits += sum(_ike_sa_init_request(d) for d, _, _ in out)
        for d, src, dst in out:
            net.put(alice, d, src, dst)

    alice.engine.receive = adapter_receive  # type: ignore[method-assign]
    alice.ext.config = replace(alice.ext.config, send_now=send_now)
    mediate(net)
    assert tied_at_send == [False]  # it left before the attempt took its IKE_SA
    assert queued_inits == 0
    assert alice.ext.attempts["bob"].sa_id is not None  # ... which it then did
    assert any(e.ike_name == "bob" for e in alice.of(ev.ChildSaEstablished))


def test_without_an_immediate_send_the_ike_sa_init_waits_in_the_engine_queue() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None
    register(net)
    alice = net.nodes["alice"]
    assert alice.ext.config.send_now is None
    queued_inits = 0
    receive = alice.engine.receive

    def adapter_receive(data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        nonlocal queued_inits
        receive(data, local, remote, now)
        out = alice.engine.datagrams_to_send()
        queued_inits += sum(_ike_sa_init_request(d) for d, _, _ in out)
        for d, src, dst in out:
            net.put(alice, d, src, dst)

    alice.engine.receive = adapter_receive  # type: ignore[method-assign]
    mediate(net)
    assert queued_inits == 1
    assert any(e.ike_name == "bob" for e in alice.of(ev.ChildSaEstablished))
