"""Work the peer does not wait for runs after the datagrams read with the message that causes it: when the
server's response to a peer's own ME_CONNECT arrives together with the message the other peer waits on
(the relayed answer, a check), that one is handled first. The target answers a queued check of the
initiator's before making its own first checks (docs/protocol.md §4.1 step 6); the initiator sends its
first check on a queued relayed answer before it makes the mediated IKE_SA_INIT's key share. Both still
happen, and the setup completes."""

from __future__ import annotations

from dataclasses import replace

from mex_net import Net, make_net, mediate, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag
from core_ike.crypto.dh import KeyExchange, KeyPool
from core_ike.me import events as mev
from core_ike.me.checks import Check, decode_check, is_connectivity_check
from core_ike.rng import Rng

ONE_WAY = 0.005


def _ike(data: bytes) -> bytes:
    return data[4:] if data.startswith(NON_ESP_MARKER) else data


def _me_connect_response(data: bytes) -> bool:
    ike = _ike(data)
    return len(ike) > 19 and ike[18] == ExchangeType.ME_CONNECT and bool(ike[19] & HeaderFlag.RESPONSE)


def _check(data: bytes) -> Check | None:
    if not data.startswith(NON_ESP_MARKER):
        return None
    msg = decode_message(data[4:])
    return decode_check(msg) if is_connectivity_check(msg) else None


def _delay_server_response_to(net: Net, peer: str, extra: float) -> list[float]:
    """The server's (first) ME_CONNECT response to `peer` takes `extra` seconds longer; returns the
    times it was sent (one entry once it was)."""
    ip = net.nodes[peer].nat.public_ip if net.nodes[peer].nat is not None else net.nodes[peer].ip
    sent: list[float] = []

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        if sender == "ms" and dst[0] == ip and _me_connect_response(data) and not sent:
            sent.append(net.now)
            return extra
        return 0.0

    net.hook = hook
    return sent


def test_target_answers_a_queued_check_before_its_own_first_checks() -> None:
    net = make_net(latency=ONE_WAY)
    bob = net.nodes["bob"]
    bob.nat = None  # bob on a public address: alice's first check reaches him
    register(net)
    # the server relays bob's answer to alice and responds to bob at once; alice's check follows the
    # relayed answer one hop later: with the response one hop late as well, both reach bob together
    delayed = _delay_server_response_to(net, "bob", ONE_WAY)
    checks: list[tuple[float, Check]] = []

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        c = _check(data)
        if c is not None:
            checks.append((net.now, c))
        net.put(bob, data, local, remote)

    bob.ext.config = replace(bob.ext.config, send_now=send_now)
    mediate(net)
    assert delayed, "the server never responded to bob's ME_CONNECT"
    first_at = checks[0][0]
    assert first_at == delayed[0] + 2 * ONE_WAY  # the response and alice's check arrived together
    # bob's first check datagram is his answer to alice's check, then his own checks (a triggered one)
    assert checks[0][1].is_response
    assert any(not c.is_response for t, c in checks if t == first_at)
    (started,) = bob.of(mev.ChecksStarted)
    assert not started.initiator


def test_initiator_checks_a_queued_relayed_answer_before_making_the_key_share() -> None:
    net = make_net(latency=ONE_WAY)
    net.nodes["bob"].nat = None
    register(net)
    alice = net.nodes["alice"]
    # the response to alice's ME_CONNECT leaves as the server relays it to bob; bob's answer comes back
    # two hops later: with the response two hops late, both reach alice together
    delayed = _delay_server_response_to(net, "alice", 2 * ONE_WAY)
    order: list[str] = []

    class CountingPool(KeyPool):
        __slots__ = ()

        def take(self, group: int, rng: Rng) -> KeyExchange:
            order.append("key share")
            return super().take(group, rng)

    alice.engine.key_pool = CountingPool()

    def send_now(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        c = _check(data)
        if c is not None and not c.is_response:
            order.append("check")
        net.put(alice, data, local, remote)

    alice.ext.config = replace(alice.ext.config, send_now=send_now)
    mediate(net)
    assert delayed, "the server never responded to alice's ME_CONNECT"
    # the check left first; the key share was still made ahead, once, and the mediated IKE_SA_INIT used it
    assert order[:2] == ["check", "key share"]
    assert order.count("key share") == 1
    (att,) = alice.ext.attempts.values()
    assert att.key_share is None and att.sa_id is not None
