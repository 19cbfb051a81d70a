"""The direct answer (core_ike/ike/fastauth.py) to a first IKE_AUTH request that came in fragments
(RFC 7383), as strongSwan's charon sends one with its certificate and a CHILD_SA: reassembled by the
TaskManager (core_ike/ike/fragments.py) and answered by the same code as an unfragmented one, with the
general path's octets, state, events and info lines; a retransmitted fragment set gets the same response
(RFC 7383 2.6.1); every request the direct answer declines still goes the general way."""

from __future__ import annotations

from typing import Any

import pytest
from test_ike_fastauth import (
    CHILD_NOTIFIES,
    _certified,
    _ike,
    _run,
    _same,
    _untrusted,
    _wrong_secret,
    info_transcripts,
)

from core_ike.codec.message import decode_message
from core_ike.constants import ExchangeType, NotifyType
from core_ike.ike import events as ev

SKF = 53  # RFC 7383 2.5
# an IKE_AUTH request with a certificate, an RFC 7427 signature and a CHILD_SA: 1217 octets, in two
# fragments of at most 800 (as charon's request goes in two of its 1280)
SIGNED_CHILD = {"with_child": True, "auth": "pubkey", "setup": lambda p: _certified(p),
                "a_conf": {"fragment_size": 800}}


def _requests(p: Any) -> list[list[bytes]]:
    """a's IKE_AUTH requests as sent, each a list of its datagrams (IKE messages)."""
    out: list[list[bytes]] = []
    for side, d in p.wire:
        m = _ike(d)
        if side == "a->b" and m[18] == ExchangeType.IKE_AUTH and not m[19] & 0x20:
            if m[16] != SKF or int.from_bytes(m[32:34], "big") == 1:  # SK, or SKF's Fragment Number 1
                out.append([])
            out[-1].append(m)
    return out


def _responses(p: Any) -> list[bytes]:
    return [_ike(d) for side, d in p.wire if side == "b->a" and _ike(d)[18] == ExchangeType.IKE_AUTH]


@pytest.mark.parametrize("shape", [
    SIGNED_CHILD,
    {**SIGNED_CHILD, "notifies": CHILD_NOTIFIES},  # as charon sends it
    {**SIGNED_CHILD, "a_conf": {"fragment_size": 800, "encap": True}},  # NAT seen: port 4500, the non-ESP marker
    {"with_child": True, "a_conf": {"fragment_size": 200}},  # a pre-shared key
    {"a_conf": {"fragment_size": 100}},  # childless (RFC 6023)
])
def test_a_fragmented_request_is_answered_directly_as_the_general_path_answers_it(
        monkeypatch: pytest.MonkeyPatch, shape: dict[str, Any]) -> None:
    fast, taken = _run(monkeypatch, True, **shape)
    general, _ = _run(monkeypatch, False, **shape)
    requests = _requests(fast)
    assert len(requests) == 2 and all(len(r) >= 2 and r[0][16] == SKF for r in requests)  # in fragments
    assert taken == 2
    assert len(fast.of("b", ev.IkeSaEstablished)) == 2 and len(fast.of("a", ev.IkeSaEstablished)) == 2
    _same(fast, general)  # the responses' octets among them
    assert fast.b.frag_budget.used == 0  # nothing of the sets is held any more


def test_a_two_fragment_signed_request_gets_the_general_paths_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case of issue 13: charon's request with its certificate, SA and TS payloads in two fragments."""
    fast, taken = _run(monkeypatch, True, rounds=1, **SIGNED_CHILD)
    general, _ = _run(monkeypatch, False, rounds=1, **SIGNED_CHILD)
    ((f1, _f2),) = _requests(fast)
    assert taken == 1 and decode_message(f1).sk.total == 2  # type: ignore[union-attr]
    (fresp,), (gresp,) = _responses(fast), _responses(general)
    fm, gm = decode_message(fresp), decode_message(gresp)
    assert (fm.spi_i, fm.spi_r, fm.exchange, fm.flags, fm.message_id) == \
        (gm.spi_i, gm.spi_r, gm.exchange, gm.flags, gm.message_id)
    assert fm.sk is not None and fm.sk.first_inner == 36  # IDr first (RFC 7296 1.2), not fragmented
    (sa,) = fast.a.ike_sas()
    assert sa.established and len(sa.children) == 1
    _same(fast, general)


@pytest.mark.parametrize("shape", [SIGNED_CHILD, {"with_child": True, "a_conf": {"fragment_size": 200}}])
def test_info_lines_of_a_fragmented_request_the_same_as_the_general_path(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, shape: dict[str, Any]) -> None:
    logged = info_transcripts(monkeypatch, caplog, shape)
    assert any(m.endswith("reassembled fragmented IKE message") for _, _, m in logged)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_retransmitted_fragment_set_gets_the_same_response(monkeypatch: pytest.MonkeyPatch,
                                                             order: tuple[int, int]) -> None:
    """RFC 7383 2.6.1: the set again (in either order) gets the kept response, once, on fragment 1."""
    p, taken = _run(monkeypatch, True, rounds=1, **SIGNED_CHILD)
    assert taken == 1
    ((*frags,),) = _requests(p)
    (response,) = _responses(p)
    ((sa,),) = [p.b.ike_sas()]
    sent: list[bytes] = []
    for i in order:
        p.b.receive(frags[i], sa.local, sa.remote, p.now)
        sent += [_ike(d) for d, _, _ in p.b.datagrams_to_send()]
    assert sent == [response]
    assert p.b.counters["drop-fragment-retransmit"] == 1
    assert taken == 1 and len(p.of("b", ev.IkeSaEstablished)) == 1 and p.b.frag_budget.used == 0


@pytest.mark.parametrize("case", [
    {**SIGNED_CHILD, "setup": _untrusted},  # AUTHENTICATION_FAILED: no trusted issuer
    {"with_child": True, "a_conf": {"fragment_size": 200}, "setup": _wrong_secret},  # AUTHENTICATION_FAILED
    {**SIGNED_CHILD, "b_conf": {"fragment_size": 800}},  # the response needs fragments too (RFC 7383 2.5)
    {"with_child": True, "a_conf": {"fragment_size": 200},  # CP(CFG_REQUEST)
     "setup": lambda p: p.a.configs[0].__setattr__("vips", ["0.0.0.0"])},
])
def test_fragmented_requests_the_direct_answer_declines_go_the_general_way(monkeypatch: pytest.MonkeyPatch,
                                                                           case: dict[str, Any]) -> None:
    fast, taken = _run(monkeypatch, True, **case)
    general, _ = _run(monkeypatch, False, **case)
    assert all(len(r) >= 2 for r in _requests(fast))
    assert taken == 0
    _same(fast, general)
    if "b_conf" in case:  # established, the response in fragments
        assert len(fast.of("b", ev.IkeSaEstablished)) == 2
        assert all(r[16] == SKF for r in _responses(fast))
    elif case["setup"] in (_untrusted, _wrong_secret):
        assert not fast.of("b", ev.IkeSaEstablished)
        failed = fast.of("b", ev.IkeSaFailed)
        assert failed and all(e.notify == NotifyType.AUTHENTICATION_FAILED for e in failed)  # type: ignore[attr-defined]
