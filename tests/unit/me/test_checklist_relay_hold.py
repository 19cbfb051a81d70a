"""The controlling side's RELAYED pair waits for the direct pairs (our relay extension, docs/protocol.md
§11.1): checked only when no direct pair succeeded half a mediation round trip (ME_CONNECT sent -> the
peer's answer) after the checks started, as long again when the peer's checks arrive on a direct pair, or
at once when every direct pair failed; fake clock."""

from __future__ import annotations

import pytest

from core_ike.constants import MeEndpointType
from core_ike.me.checklist import CheckList, CheckListConfig, CheckListSucceeded, PairState
from core_ike.me.checks import decode_check, encode_check, make_check, request_endpoint, response_endpoint
from core_ike.me.endpoints import Addr, Endpoint, make_endpoint, srflx_endpoint

CID = bytes.fromhex("0badcafe")
KEY_A, KEY_B = bytes(range(16)), bytes(range(16, 32))
A_HOST = ("10.1.0.2", 4500)
B_HOST, B_PUB = ("10.2.0.2", 4500), ("203.0.113.2", 4500)
RELAY = ("198.51.100.1", 50000)
CFG = CheckListConfig(transaction_timeout=100.0, rto=1.0, max_retransmits=0)


def remote() -> list[Endpoint]:
    return [make_endpoint(MeEndpointType.HOST, *B_HOST), make_endpoint(MeEndpointType.SERVER_REFLEXIVE, *B_PUB),
            make_endpoint(MeEndpointType.RELAYED, *RELAY)]


def controlling(asked: float = 0.0, answered: float = 0.008, cfg: CheckListConfig = CFG) -> CheckList:
    """ME_CONNECT sent at `asked`, the peer's answer (and the checks' start) at `answered`."""
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], asked, cfg)
    a.set_responder_data(KEY_B, remote(), answered)
    return a


def sent_to(cl: CheckList, until: float) -> list[tuple[float, Addr]]:
    """Run the list's timers up to `until` (nothing arrives); the checks it sent, when and where."""
    out = [(cl.created, d) for data, _, d in cl.datagrams_to_send() if not decode_check(data).is_response]
    while (t := cl.get_timer()) is not None and t <= until:
        cl.handle_timer(t)
        out += [(t, d) for data, _, d in cl.datagrams_to_send() if not decode_check(data).is_response]
    return out


def answer(cl: CheckList, mid: int, src: Addr, now: float) -> None:
    resp = make_check(True, mid, CID, response_endpoint(A_HOST, 0x0080FFFF), KEY_B)
    assert cl.receive_check(encode_check(resp), src, A_HOST, now) is None


def pair_to(cl: CheckList, addr: Addr):  # type: ignore[no-untyped-def]
    return next(p for p in cl.pairs if p.remote_addr == addr)


def test_relayed_pair_is_checked_half_a_mediation_round_trip_after_the_start() -> None:
    a = controlling(0.0, 0.020)  # the mediation round trip: 20 ms, about two direct ones
    sent = sent_to(a, 0.0299)
    assert [d for _, d in sent] == [B_HOST, B_PUB]  # the initial burst leaves out the RELAYED pair
    assert pair_to(a, RELAY).state == PairState.WAITING
    sent = sent_to(a, 0.0301)
    assert sent == [(pytest.approx(0.030), RELAY)]


def test_a_direct_pair_the_peer_is_heard_on_gets_the_hold_once_more() -> None:
    a = controlling(0.0, 0.020)
    sent_to(a, 0.020)
    req = make_check(False, 5, CID, request_endpoint(), KEY_B)
    assert a.receive_check(encode_check(req), B_PUB, A_HOST, 0.022) is None  # heard on the srflx pair
    assert [d for _, d in sent_to(a, 0.0399)] == [B_PUB]  # the triggered check, at once
    assert sent_to(a, 0.0401) == [(pytest.approx(0.040), RELAY)]  # 30 ms + 10 ms, once


def test_a_direct_success_makes_the_hold_permanent() -> None:
    a = controlling(0.0, 0.008)
    sent_to(a, 0.008)
    answer(a, pair_to(a, B_PUB).id, B_PUB, 0.010)
    assert [d for _, d in sent_to(a, 1.0)] == []  # nothing more: the RELAYED pair could not be selected
    ok = [e for e in iter(a.next_event, None) if isinstance(e, CheckListSucceeded)]
    assert ok and ok[0].selected.remote == B_PUB
    assert pair_to(a, RELAY).state == PairState.FAILED  # the list ended: never checked, not succeeded


def test_every_direct_pair_failing_releases_the_relay() -> None:
    cfg = CheckListConfig(transaction_timeout=100.0, rto=0.010, max_retransmits=0, rto_max=0.010)
    a = controlling(0.0, 0.100, cfg)  # hold until 200 ms; the direct pairs fail at 110 ms
    sent = sent_to(a, 0.111)
    assert [d for _, d in sent] == [B_HOST, B_PUB, RELAY]
    assert sent[-1][0] == pytest.approx(0.110)
    assert [p.state for p in a.pairs[:2]] == [PairState.FAILED, PairState.FAILED]


def test_the_hold_is_bounded() -> None:
    a = controlling(0.0, 2.0)  # ME_CONNECT retransmitted: a 2 s "round trip"
    sent = sent_to(a, 2.0 + CFG.relay_delay_max)
    assert sent[-1] == (pytest.approx(2.0 + CFG.relay_delay_max), RELAY)


def test_a_triggered_check_on_the_held_pair_waits_for_the_release() -> None:
    a = controlling(0.0, 0.020)
    sent_to(a, 0.020)
    req = make_check(False, 7, CID, request_endpoint(), KEY_B)
    assert a.receive_check(encode_check(req), RELAY, A_HOST, 0.021) is None
    out = a.datagrams_to_send()
    assert len(out) == 1 and decode_check(out[0][0]).is_response  # answered, our check held
    assert pair_to(a, RELAY).heard and pair_to(a, RELAY).state == PairState.WAITING
    assert sent_to(a, 0.0301)[-1] == (pytest.approx(0.030), RELAY)


def test_the_controlled_side_checks_the_relayed_pair_at_once() -> None:
    """Its check latches the relay for the controlling side's (mediation_server/datarelay.py)."""
    b = CheckList.for_responder(CID, KEY_A, remote(), 0.0, CFG)
    b.set_responder_data(KEY_B, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.004)
    assert [d for _, d in sent_to(b, 0.004)] == [B_HOST, B_PUB, RELAY]


def test_no_hold_when_the_lists_start_together() -> None:
    """A list created and started at once (the relay -> direct upgrade's watch rounds) checks every pair in
    its first burst."""
    a = CheckList.for_initiator(CID, KEY_A, [srflx_endpoint("203.0.113.1", 4500, base=A_HOST)], 5.0, CFG)
    a.set_responder_data(KEY_B, remote(), 5.0)
    assert [d for _, d in sent_to(a, 5.0)] == [B_HOST, B_PUB, RELAY]
