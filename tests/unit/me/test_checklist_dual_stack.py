"""Dual stack, controlling side ([ME] §5.4, docs/protocol.md §8): the IPv6 host pair ranks first; when its
answer and a worse IPv4 pair's arrive close together, in either order, the IPv6 pair is nominated. The
peer's own IPv6 check never arrives (our CPE's filter dropped it before our check opened the pinhole), so
only our check in flight says the pair may work. Fake clock, no sockets."""

from __future__ import annotations

import pytest

from core_ike.me.checklist import CheckList, CheckListConfig, CheckListSucceeded, PairState
from core_ike.me.checks import encode_check, make_check, response_endpoint
from core_ike.me.endpoints import Addr, host_endpoints, srflx_endpoint
from tests.unit.me.test_me_checklist import CID, KEY_A, KEY_B, drain, wire

A6, B6 = ("2001:db8:1::2", 4500), ("2001:db8:2::2", 4500)
A4, B4 = ("10.1.0.2", 4500), ("10.2.0.2", 4500)
A_PUB, B_PUB = ("203.0.113.1", 4500), ("203.0.113.2", 4500)
RTT = 0.001  # the lab's: well under finish_margin


def controlling(cfg: CheckListConfig | None = None) -> CheckList:
    """alice: pairs #1 v6 host-host, #2 v4 host-host, #3 v4 host -> bob's srflx; all three checks leave at 0
    (initial burst)."""
    a_eps = [*host_endpoints([A4[0], A6[0]], 4500), srflx_endpoint(*A_PUB, base=A4)]
    b_eps = [*host_endpoints([B4[0], B6[0]], 4500), srflx_endpoint(*B_PUB, base=B4)]
    a = CheckList.for_initiator(CID, KEY_A, a_eps, 0.0, cfg or CheckListConfig(transaction_timeout=100.0))
    a.set_responder_data(KEY_B, wire(b_eps), 0.0)
    assert [(p.id, p.remote_addr) for p in a.pairs] == [(1, B6), (2, B4), (3, B_PUB)]
    a.handle_timer(0.0)
    sent = a.datagrams_to_send()
    assert [d[2] for d in sent] == [B6, B4, B_PUB]
    return a


def answer(cl: CheckList, mid: int, src: Addr, dst: Addr, mapped: Addr, now: float) -> None:
    resp = make_check(True, mid, CID, response_endpoint(mapped, 0x0080FFFF), KEY_B)
    assert cl.receive_check(encode_check(resp), src, dst, now) is None


def answer_v6(cl: CheckList, now: float) -> None:
    answer(cl, 1, B6, A6, A6, now)


def answer_v4(cl: CheckList, now: float) -> None:
    answer(cl, 3, B_PUB, A4, A_PUB, now)


def run_timers(cl: CheckList, until: float) -> None:
    while (t := cl.get_timer()) is not None and t <= until:
        cl.handle_timer(t)
        cl.datagrams_to_send()


def selected(cl: CheckList) -> int | None:
    ok = [e for e in drain(cl) if isinstance(e, CheckListSucceeded)]
    return ok[0].selected.id if ok else None


@pytest.mark.parametrize("delta", [0.0, 0.0001, 0.0005, RTT])
def test_v4_answer_first_then_v6_within_a_round_trip_selects_v6(delta: float) -> None:
    a = controlling()
    answer_v4(a, RTT)
    run_timers(a, RTT + delta - 1e-9)  # the timers due before the v6 answer arrives
    assert selected(a) is None and not a.finished
    answer_v6(a, RTT + delta)
    assert selected(a) == 1


def test_v6_answer_first_selects_v6_at_once() -> None:
    a = controlling()
    answer_v6(a, RTT)
    assert selected(a) == 1 and a.finished
    answer_v4(a, RTT)  # a late answer changes nothing
    assert selected(a) is None


def test_v6_silent_v4_taken_after_one_round_trip_and_the_margin() -> None:
    """The v6 path does not work (its check is lost, the peer's never comes): the v4 pair is nominated one
    quickest round trip plus the margin (one more round trip, at least finish_margin_min) after the v6
    check left: a bounded wait, not the pair's retransmissions."""
    a = controlling()
    answer_v4(a, RTT)
    due = RTT + max(RTT, CheckListConfig().finish_margin_min)
    run_timers(a, due - 1e-9)
    assert selected(a) is None
    run_timers(a, due)
    assert selected(a) == 3
    assert [p.state for p in a.pairs] == [PairState.FAILED, PairState.FAILED, PairState.SUCCEEDED]


def test_the_margin_is_capped_by_finish_margin() -> None:
    """A slow path (RTT 40 ms): the v6 pair's answer is waited for until 40 ms + finish_margin."""
    a = controlling()
    answer_v4(a, 0.040)
    run_timers(a, 0.045 - 1e-9)
    assert selected(a) is None
    run_timers(a, 0.045)
    assert selected(a) == 3


def test_no_better_pair_selects_at_once() -> None:
    """Only one pair (bob's IPv6 address, no v4): nothing can beat it, the answer is nominated at once."""
    a = CheckList.for_initiator(CID, KEY_A, host_endpoints([A6[0]], 4500), 0.0,
                                CheckListConfig(transaction_timeout=100.0))
    a.set_responder_data(KEY_B, wire(host_endpoints([B6[0]], 4500)), 0.0)
    a.handle_timer(0.0)
    assert len(a.datagrams_to_send()) == 1
    answer_v6(a, RTT)
    assert selected(a) == 1 and a.finished
