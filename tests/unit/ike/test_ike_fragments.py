"""RFC 7383 fragments on the receive side: the message-ID window, the memory caps (per IKE_SA and
engine-wide), drop counters and rate-limited drop lines. Two engines in memory, a fake clock.

The attacker is a peer that completed IKE_SA_INIT (so it holds the keys of its half-open IKE_SA and
its fragments pass the ICV) and then sends fragment sets that never complete.
"""

from __future__ import annotations

import logging

import pytest
from ike_pair import Pair, make_pair

from core_ike.codec.message import encode_message
from core_ike.codec.payloads import VendorIdPayload
from core_ike.constants import ExchangeType
from core_ike.ike import events as ev
from core_ike.ike.sa import IkeSa, IkeState
from core_ike.ike.tasks.informational import Dpd

FRAG = 300  # the legitimate peers' fragment_size (an IKE_AUTH with RSA-2048 AUTH goes in several)


def _exchange(data: bytes) -> int:
    return data[4 + 18] if data[:4] == b"\x00\x00\x00\x00" else data[18]


def _pair(**b_kw: object) -> Pair:
    return make_pair(auth="pubkey", a_conf={"fragment_size": FRAG}, b_conf={"fragment_size": FRAG},
                     b_kw={"cookie_threshold_ip": 1000, **b_kw})


def _half_open(p: Pair, n: int = 1) -> list[tuple[IkeSa, IkeSa]]:
    """`n` IKE_SAs whose IKE_SA_INIT completed and whose IKE_AUTH is held back: (a's SA, b's SA)."""
    p.drop = lambda side, data: side == "a->b" and _exchange(data) == ExchangeType.IKE_AUTH
    out = []
    for _ in range(n):
        sa = p.a.initiate("home", now=p.now, remote=("192.0.2.2", 500))
        p.pump()
        (sb,) = [s for s in p.b.ike_sas() if s.spi_i == sa.spi_i]
        assert sa.out_prot is not None and sb.in_prot is not None and not sb.established
        out.append((sa, sb))
    return out


def _forge(sa: IkeSa, mid: int, size: int, frag_size: int = 1200, skip_first: bool = True) -> list[bytes]:
    """An IKE_AUTH request of `size` octets from `sa`, in fragments, fragment 1 left out (never completes)."""
    msg = sa.new_message(ExchangeType.IKE_AUTH, False, mid)
    msg.payloads.append(VendorIdPayload(bytes(size)))
    frags = encode_message(msg, sa.out_prot, frag_size)
    assert len(frags) > 1
    return frags[1:] if skip_first else frags


def _feed(p: Pair, sb: IkeSa, datagrams: list[bytes]) -> None:
    for d in datagrams:
        p.b.receive(d, sb.local, sb.remote, p.now)


def _held(sb: IkeSa) -> list[int]:
    """Message IDs of b's incomplete reassemblies for this SA."""
    return [] if sb.tm.fragments is None else [k[2] for k in sb.tm.fragments.reassembler]


def test_fragments_of_other_message_ids_are_dropped_before_storing() -> None:
    p = _pair()
    ((sa, sb),) = _half_open(p)
    sent = 0
    for mid in range(2, 40):  # b expects request 1 next
        frags = _forge(sa, mid, 6000)
        _feed(p, sb, frags)
        sent += len(frags)
    # responses to a request b never sent
    resp = sa.new_message(ExchangeType.IKE_AUTH, True, 1)
    resp.payloads.append(VendorIdPayload(bytes(3000)))
    stray = encode_message(resp, sa.out_prot, 1200)
    _feed(p, sb, stray)
    assert p.b.counters["drop-fragment-window"] == sent + len(stray)
    assert _held(sb) == [] and p.b.frag_budget.used == 0 and sb.tm.fragments is not None
    assert sb.tm.fragments.reassembler.peak == 0  # nothing was ever stored
    # the legitimate IKE_AUTH (fragmented) still goes through when a retransmits it
    p.drop = None
    p.advance(10)
    assert sa.state is IkeState.ESTABLISHED and sb.state is IkeState.ESTABLISHED
    assert sum(1 for side, d in p.wire if side == "a->b" and _exchange(d) == ExchangeType.IKE_AUTH) > 2


def test_a_set_over_the_per_sa_cap_is_dropped_and_the_sa_still_completes() -> None:
    cap = 10_000
    p = _pair(frag_max_per_sa=cap)
    ((sa, sb),) = _half_open(p)
    frags = _forge(sa, 1, 30_000)  # the expected Message ID: inside the window, but too big
    fed = 0
    for d in frags:
        _feed(p, sb, [d])
        fed += 1
        assert sb.tm.fragments is not None and sb.tm.fragments.reassembler.used <= cap
        if p.b.counters["drop-fragment-memory"]:
            break
    assert fed < len(frags) and p.b.counters["drop-fragment-memory"] == fed  # the whole set went
    assert _held(sb) == [] and p.b.frag_budget.used == 0
    assert sb.tm.fragments.reassembler.peak <= cap
    p.drop = None
    p.advance(10)  # a retransmits its IKE_AUTH, in fragments that fit
    assert sa.state is IkeState.ESTABLISHED and sb.state is IkeState.ESTABLISHED
    assert p.of("b", ev.ChildSaEstablished)


def test_the_engine_wide_budget_holds_across_many_half_open_sas() -> None:
    total = 60_000
    p = _pair(frag_max_total=total)
    sas = _half_open(p, 12)
    for sa, sb in sas:
        for d in _forge(sa, 1, 9000):  # inside each SA's window, far below the per-SA cap
            p.b.receive(d, sb.local, sb.remote, p.now)
            assert p.b.frag_budget.used <= total
    assert p.b.frag_budget.peak <= total
    dropped = p.b.counters["drop-fragment-memory"]
    assert dropped > 0
    # oldest first: the first SAs lost their sets, the last ones still hold theirs
    holding = [bool(_held(sb)) for _, sb in sas]
    assert holding[-1] and not holding[0]
    assert holding == sorted(holding)  # a prefix lost them, the rest kept them
    assert p.b.frag_budget.used == sum(sb.tm.fragments.reassembler.used for _, sb in sas if sb.tm.fragments)
    # the half-open SAs expire and give everything back
    p.advance(p.b.cfg.half_open_timeout + 1)
    assert all(sb.state is IkeState.DESTROYED for _, sb in sas)
    assert p.b.frag_budget.used == 0 and len(p.b.frag_budget) == 0


def test_a_new_message_id_replaces_an_older_incomplete_set() -> None:
    p = _pair()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.established
    (sb,) = p.b.ike_sas()
    mid = sb.peer_mid
    _feed(p, sb, _forge(sa, mid, 3000))
    assert _held(sb) == [mid]
    sa.queue_task(Dpd(), p.now)  # request `mid` arrives whole: answered, the window moves on
    p.pump()
    assert sb.peer_mid == mid + 1 and _held(sb) == [mid]  # the stale set waits for its timeout ...
    _feed(p, sb, _forge(sa, mid + 1, 3000))
    assert _held(sb) == [mid + 1]  # ... or for the next Message ID's fragments
    assert p.b.counters["drop-fragment-replaced"] > 0
    p.advance(31)  # the reassembly timeout
    assert _held(sb) == [] and p.b.counters["drop-fragment-expired"] > 0 and p.b.frag_budget.used == 0
    assert sa.established and sb.established


def test_a_retransmitted_fragmented_request_is_answered_on_fragment_1_only() -> None:
    """RFC 7383 2.6.1: fragments of a request already answered are not reassembled again."""
    p = _pair()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.established
    (sb,) = p.b.ike_sas()
    auth = [d for side, d in p.wire if side == "a->b" and _exchange(d) == ExchangeType.IKE_AUTH]
    assert len(auth) >= 2
    before = len(p.wire)
    for d in auth[1:]:
        p.b.receive(d[4:] if d[:4] == bytes(4) else d, sb.local, sb.remote, p.now)
    assert p.b.datagrams_to_send() == []
    assert p.b.counters["drop-fragment-retransmit"] == len(auth) - 1
    p.b.receive(auth[0][4:] if auth[0][:4] == bytes(4) else auth[0], sb.local, sb.remote, p.now)
    resent = p.b.datagrams_to_send()
    assert resent and len(p.wire) == before
    assert sb.tm.fragments is not None and sb.tm.fragments.reassembler.peak > 0 and _held(sb) == []


def test_forged_fragments_are_counted_and_never_stored() -> None:
    p = _pair()
    ((sa, sb),) = _half_open(p)
    frags = _forge(sa, 1, 5000)
    forged = [d[:-1] + bytes([d[-1] ^ 1]) for d in frags]  # ICV broken
    _feed(p, sb, forged)
    assert p.b.counters["drop-fragment-integrity"] == len(forged)
    assert _held(sb) == [] and p.b.frag_budget.used == 0


def test_drop_lines_are_rate_limited_per_sa(caplog: pytest.LogCaptureFixture) -> None:
    p = _pair()
    ((sa, sb),) = _half_open(p)
    frags = [d for mid in range(5, 25) for d in _forge(sa, mid, 2000)]
    with caplog.at_level(logging.INFO, logger="core_ike.ike"):
        _feed(p, sb, frags)
        p.now += 1.0
        _feed(p, sb, _forge(sa, 99, 2000)[:1])
    lines = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "outside the message-ID window" in lines[0] and sb.label in lines[0]
    assert f"({len(frags) - 1} more fragment drop lines suppressed)" in lines[1]
    assert p.b.counters["drop-fragment-window"] == len(frags) + 1
