"""What a peer waits for leaves before the work it causes: a check's answer before the triggered check
it causes is made ([ME] §5.2), and the mediated IKE_SA_INIT response before the responder's check list
stops (docs/protocol.md §8). The setup completes as before, and the list does stop."""

from __future__ import annotations

from dataclasses import replace

from mex_net import make_net, mediate, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag, NotifyType
from core_ike.ike import events as ev
from core_ike.me.checks import decode_check, is_connectivity_check
from core_ike.me.checktypes import PairState


def _check(data: bytes):  # type: ignore[no-untyped-def]
    if not data.startswith(NON_ESP_MARKER):
        return None
    msg = decode_message(data[4:])
    return decode_check(msg) if is_connectivity_check(msg) else None


def test_check_answer_leaves_before_its_triggered_check_is_made() -> None:
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: alice's check reaches him first
    register(net)
    bob = net.nodes["bob"]
    seen: list[tuple[int, bool]] = []  # per answer bob sent: (message ID, any pair of his already triggered)

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        c = _check(data)
        if c is not None and c.is_response:
            lists = list(bob.ext.checks)
            seen.append((c.message_id, any(p.instant for cl in lists for p in cl.pairs)))
        net.put(bob, data, local, remote)

    bob.ext.config = replace(bob.ext.config, send_now=send_now)
    mediate(net)
    assert seen, "bob answered no check"
    # the first answer left while no triggered check of bob's had been made yet
    assert seen[0][1] is False
    # ... and the triggered check did follow it
    assert any(t == "bob" and (c := _check(d)) is not None and not c.is_response
               for _, t, _, _, d in net.wire)


def test_ike_sa_init_response_leaves_before_the_check_list_stops() -> None:
    net = make_net(latency=0.005)
    register(net)
    bob = net.nodes["bob"]
    at_response: list[int] = []  # bob's check lists when his IKE_SA_INIT response left
    receive = bob.engine.receive

    def adapter_receive(data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        # as the daemon's transport: a datagram's replies leave as soon as receive returns, timers after
        receive(data, local, remote, now)
        for out, src, dst in bob.engine.datagrams_to_send():
            ike = out[4:] if out.startswith(NON_ESP_MARKER) else out
            if len(ike) > 19 and ike[18] == ExchangeType.IKE_SA_INIT and ike[19] & HeaderFlag.RESPONSE:
                at_response.append(len(bob.ext.checks))
            net.put(bob, out, src, dst)

    bob.engine.receive = adapter_receive  # type: ignore[method-assign]
    mediate(net)
    assert at_response == [1]  # the list was still there when the response left
    assert len(bob.ext.checks) == 0 and not bob.ext.sessions  # and stopped right after
    (est,) = [e for e in bob.of(ev.IkeSaEstablished) if e.name == "alice"]
    assert est.unique_id in bob.ext._target_sas  # tied to its session at once


def test_target_answer_leaves_before_its_check_list_is_made() -> None:
    net = make_net(latency=0.005)
    register(net)
    bob = net.nodes["bob"]
    lists_at_answer: list[int] = []

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
        if len(ike) > 19 and ike[18] == ExchangeType.ME_CONNECT and not ike[19] & HeaderFlag.RESPONSE:
            lists_at_answer.append(len(bob.ext.checks))
        net.put(bob, data, local, remote)

    bob.ext.config = replace(bob.ext.config, send_now=send_now)
    mediate(net)  # the list made right after answers alice's checks: the setup completes
    assert lists_at_answer == [0]


def test_target_refuses_a_second_request_with_the_same_connect_id() -> None:
    net = make_net(latency=0.005)
    register(net)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    mediate(net)
    sa = bob.ext.mediation_sa("medsrv")
    cid, key = b"\x01" * 4, b"\x02" * 16
    eps = bob.ext.gather(sa)  # any valid endpoints
    peer = alice.engine.config("bob").local.id
    assert bob.ext._relayed_request(sa, cid, key, eps, peer, net.now) == []
    net.run(0.1)
    assert bob.ext.checks.get(cid) is not None
    again = bob.ext._relayed_request(sa, cid, key, eps, peer, net.now)
    assert [int(p.type) for p in again] == [NotifyType.ME_CONNECT_FAILED]


def test_a_bursts_first_check_leaves_before_the_next_is_made() -> None:
    net = make_net(latency=0.005)  # both behind NAT: alice's list starts with a burst of checks
    register(net)
    alice = net.nodes["alice"]
    in_progress: list[int] = []  # per check alice sent: how many of her pairs were in progress then

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        c = _check(data)
        if c is not None and not c.is_response:
            in_progress.append(sum(p.state is PairState.IN_PROGRESS for cl in alice.ext.checks for p in cl.pairs))
        net.put(alice, data, local, remote)

    alice.ext.config = replace(alice.ext.config, send_now=send_now)
    mediate(net)
    assert len(in_progress) >= 2 and in_progress[:2] == [1, 2]  # the first left before the second was made
