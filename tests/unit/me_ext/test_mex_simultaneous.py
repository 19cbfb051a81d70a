"""Simultaneous mediation (docs/protocol.md §11.9): both peers connect() to each other at about the
same time; the tie-break in core_ike/me/tiebreak.py keeps exactly one attempt, so exactly one mediated
IKE_SA is ever set up (no duplicate for the IKE_SA collision rule to delete)."""

from __future__ import annotations

import itertools
import logging

import pytest
from mex_net import make_net, register

from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.attempt import AttemptState
from core_ike.me.tiebreak import decide, own_attempt_wins
from core_ike.rng import SeededRng

LOW, HIGH = bytes.fromhex("10000001"), bytes.fromhex("f0000002")


class _ConnectIds:
    """The mediation client's random source (MediationClient.rng) with chosen connect IDs: the 4-octet
    draws are ME_CONNECTIDs (docs/protocol.md §4.1), the 16-octet ones ME_CONNECTKEYs."""

    def __init__(self, first: bytes, seed: str) -> None:
        self.ids = itertools.chain([first], (bytes([0, 0, 0, i]) for i in range(1, 200)))
        self.rest = SeededRng(seed)

    def bytes(self, n: int) -> bytes:
        return next(self.ids) if n == 4 else self.rest.bytes(n)


def _fixed_ids(net, alice: bytes, bob: bytes) -> None:  # type: ignore[no-untyped-def]
    net.nodes["alice"].ext.rng = _ConnectIds(alice, "alice")
    net.nodes["bob"].ext.rng = _ConnectIds(bob, "bob")


def _run_both(net, offset: float, first: str = "alice"):  # type: ignore[no-untyped-def]
    other = "bob" if first == "alice" else "alice"
    a, b = net.nodes[first], net.nodes[other]
    a.ext.connect(other, net.now)
    if offset:
        net.run(offset)
    b.ext.connect(first, net.now)
    def done() -> bool:
        return all(n.of(ev.ChildSaEstablished) and n.of(mev.MediatedEstablished) for n in (a, b)) \
            or any(n.of(mev.MediationFailed) for n in (a, b))

    net.run(30.0, until=done)
    net.run(10.0)  # nothing else may happen: no second IKE_SA, no deletion


def _assert_one_sa(net) -> None:  # type: ignore[no-untyped-def]
    for me, other in (("alice", "bob"), ("bob", "alice")):
        node = net.nodes[me]
        assert not node.of(mev.MediationFailed), node.of(mev.MediationFailed)
        assert len([e for e in node.of(ev.IkeSaEstablished) if e.name == other]) == 1
        assert not [e for e in node.of(ev.IkeSaDeleted) if e.name == other]
        (est,) = node.of(mev.MediatedEstablished)
        assert est.name == other
        (conn,) = node.ext.status().connections
        assert conn.state == "established"
        assert len(node.ext.checks) == 0 and not node.ext.sessions
    (ca,), (cb,) = net.nodes["alice"].of(ev.ChildSaEstablished), net.nodes["bob"].of(ev.ChildSaEstablished)
    assert ca.keys.spi_out == cb.keys.spi_in


@pytest.mark.parametrize("offset", [0.0, 0.001, 0.005])
@pytest.mark.parametrize("alice_high", [True, False])
def test_simultaneous_connect_one_sa(caplog: pytest.LogCaptureFixture,
                                     offset: float, alice_high: bool) -> None:
    caplog.set_level(logging.INFO, logger="core_ike")
    net = make_net(latency=0.010)
    _fixed_ids(net, HIGH if alice_high else LOW, LOW if alice_high else HIGH)
    register(net)
    _run_both(net, offset)
    _assert_one_sa(net)
    winner, loser = ("alice", "bob") if alice_high else ("bob", "alice")
    # the loser's connect() was satisfied by the winner's mediated IKE_SA: it never initiated one
    assert not net.nodes[loser].of(mev.MediatedInitiating) and net.nodes[winner].of(mev.MediatedInitiating)
    (yielded,) = [r.getMessage() for r in caplog.records if "yielded" in r.getMessage()]
    assert f"mediated connection '{winner}'" in yielded and HIGH.hex() in yielded and LOW.hex() in yielded
    assert [r for r in caplog.records if "keeping our attempt" in r.getMessage()]
    assert not [r for r in caplog.records if "duplicate IKE_SA" in r.getMessage()]
    # the loser's status shows the winner's connect ID
    (conn,) = net.nodes[loser].ext.status().connections
    assert conn.connect_id == HIGH.hex() and conn.sa_id is not None


def test_simultaneous_random_ids_bob_first() -> None:
    net = make_net(latency=0.010)
    register(net)
    _run_both(net, 0.001, first="bob")
    _assert_one_sa(net)


def test_connect_while_already_target_joins(caplog: pytest.LogCaptureFixture) -> None:
    """bob calls connect() after alice's ME_CONNECT reached him: he joins her attempt, sends nothing."""
    caplog.set_level(logging.INFO, logger="core_ike")
    net = make_net(latency=0.010)
    register(net)
    _run_both(net, 0.030)  # alice's request reaches bob at +20 ms
    _assert_one_sa(net)
    assert not net.nodes["bob"].of(mev.MeConnectSent) or all(e.response for e in net.nodes["bob"].of(mev.MeConnectSent))
    assert any("already the target" in r.getMessage() for r in caplog.records)


def test_yielded_attempt_fails_with_the_winner() -> None:
    """The winner's attempt fails (its checks find no pair): the loser's connect() ends too, bounded."""
    net = make_net(latency=0.010)
    register(net)
    net.hook = lambda sender, data, src, dst: None if dst[0] != "198.51.100.1" and sender != "ms" else 0.0
    _run_both(net, 0.001)
    for me in ("alice", "bob"):
        node = net.nodes[me]
        assert len(node.of(mev.MediationFailed)) == 1 and not node.of(mev.MediatedEstablished)
        assert len(node.ext.checks) == 0 and not node.ext.sessions


def test_rule() -> None:
    assert own_attempt_wins(HIGH, LOW, "a", "b") and not own_attempt_wins(LOW, HIGH, "b", "a")
    assert own_attempt_wins(bytes(4), bytes(8), "b", "a") and not own_attempt_wins(bytes(4), bytes(8), "a", "b")
    assert decide(AttemptState.CALLBACK, HIGH, True, LOW, "a", "b") == "yield"
    assert decide(AttemptState.CONNECTING, HIGH, False, LOW, "a", "b") == "yield"  # not sent: the peer cannot know it
    assert decide(AttemptState.INITIATING, LOW, True, HIGH, "a", "b") == "keep"
    assert decide(AttemptState.RELAYED, HIGH, True, LOW, "a", "b") == "keep"
