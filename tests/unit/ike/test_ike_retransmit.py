"""Retransmission schedules (RFC 7296 2.1, 2.4) and timers around requests in flight."""

from __future__ import annotations

from ike_pair import make_pair

from core_ike.ike.sa import IkeState


def _up(p):  # type: ignore[no-untyped-def]
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    return sa


def test_dpd_due_while_a_request_is_retransmitted_does_not_spin() -> None:
    """A DPD falls due while another request is in flight (e.g. under loss): the request's own
    retransmission timer is the next deadline, not the overdue DPD (a deadline in the past that nothing
    moves would make the engine's timer loop spin)."""
    p = make_pair(a_conf={"dpd_delay": 10.0})
    sa = _up(p)
    p.drop = lambda side, data: True
    p.a.initiate("home", now=p.now)  # a CREATE_CHILD_SA that gets no answer
    assert sa.outstanding is not None
    sa.last_in = p.now - 20.0  # the DPD is overdue
    assert sa.next_deadline() == sa.outstanding.deadline > p.now
    p.advance(12.0)  # retransmissions fire; every handle_timer returns
    assert sa.outstanding is not None and sa.next_deadline() == sa.outstanding.deadline > p.now
    p.advance(300)  # retransmissions run out: the SA goes, no endless loop on the way
    assert sa.state is IkeState.DESTROYED
