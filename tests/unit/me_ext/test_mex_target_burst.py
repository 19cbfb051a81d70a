"""The target's first checks (core_ike/me/target.py `_responder_checks`, docs/protocol.md §7.6): behind a
NAT its list starts with the initial burst (its checks open its NAT for the initiator's); without a NAT
(its mediation SA saw none, RFC 7296 2.23) one check leaves when the server accepts its answer and the
next only a pacing interval later, so that nothing but that one check stands before its answer to the
initiator's first check. Both setups complete."""

from __future__ import annotations

from mex_net import Net, make_net, mediate, register

from core_ike.codec.message import decode_message
from core_ike.constants import NON_ESP_MARKER, HeaderFlag
from core_ike.me.checks import is_connectivity_check


def _checks(net: Net, sender: str) -> list[tuple[float, bytes]]:
    """(time, datagram) of the connectivity check requests `sender` put on the wire."""
    out = []
    for t, name, _, _, data in net.wire:
        if name != sender or not data.startswith(NON_ESP_MARKER):
            continue
        msg = decode_message(data[4:])
        if is_connectivity_check(msg) and not msg.flags & HeaderFlag.RESPONSE:
            out.append((t, data))
    return out


def _first_checks(public_bob: bool) -> tuple[int, float]:
    """How many checks bob sent at the time of his first, and the pacing gap to his next."""
    net = make_net(latency=0.005)
    if public_bob:
        net.nodes["bob"].nat = None
    register(net)
    start = len(net.wire)
    mediate(net)
    net.wire = net.wire[start:]
    checks = _checks(net, "bob")
    assert checks, "bob sent no check"
    t0 = checks[0][0]
    at_once = sum(1 for t, _ in checks if t == t0)
    later = [t for t, _ in checks if t > t0]
    return at_once, (later[0] - t0) if later else float("inf")


def test_a_target_behind_a_nat_starts_with_the_burst() -> None:
    at_once, _ = _first_checks(public_bob=False)
    assert at_once >= 2


def test_a_target_without_a_nat_starts_with_one_check() -> None:
    net = make_net(latency=0.005)
    pacing = net.nodes["bob"].ext.config.checks.pacing
    at_once, gap = _first_checks(public_bob=True)
    assert at_once == 1
    assert gap >= pacing - 1e-9
