"""Retransmission schedules (RFC 7296 2.1, 2.4) and timers around requests in flight."""

from __future__ import annotations

import itertools
import random

import pytest
from ike_pair import make_pair

from core_ike.ike.config import RetransmitConfig
from core_ike.ike.context import Status, Task
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


# --- the schedule: a pure function of (config, attempt, prompt) -------------------------------------

def test_main_schedule_is_strongswans() -> None:
    rt = RetransmitConfig()
    assert [round(rt.delay(n), 3) for n in range(6)] == [4.0, 7.2, 12.96, 23.328, 41.99, 75.583]
    assert rt.retransmits() == 5 and rt.give_up_after() == pytest.approx(165.06, abs=0.01)


def test_prompt_exchanges_start_with_the_early_schedule() -> None:
    rt = RetransmitConfig()
    waits = [rt.delay(n, prompt=True) for n in range(rt.retransmits(True) + 1)]
    assert rt.early_steps() == 16 and rt.retransmits(True) == 21
    assert waits[:3] == pytest.approx([0.25, 0.3, 0.36])
    assert all(b > a for a, b in itertools.pairwise(waits))  # RFC 7296 2.4: always growing
    assert waits[15] < 4.0 and waits[16:] == [rt.delay(n) for n in range(6)]  # then the main schedule
    assert rt.early_span() == pytest.approx(21.9, abs=0.05)
    assert rt.give_up_after(True) == pytest.approx(rt.early_span() + rt.give_up_after())


def test_early_schedule_off() -> None:
    rt = RetransmitConfig(early_timeout=0)
    assert rt.early_steps() == 0 and rt.delay(0, prompt=True) == 4.0 and rt.retransmits(True) == 5
    assert RetransmitConfig(early_timeout=5.0).early_steps() == 0  # not shorter than `timeout`: nothing early


def _sent_at(p, side: str = "a->b", drop_first: int = 0):  # type: ignore[no-untyped-def]
    """Record when `side` sends; lose its first `drop_first` datagrams."""
    times: list[float] = []

    def drop(s: str, data: bytes) -> bool:
        if s != side:
            return False
        times.append(p.now)
        return len(times) <= drop_first

    p.drop = drop
    return times


def test_lost_ike_sa_init_retransmitted_after_a_quarter_second() -> None:
    p = make_pair()
    times = _sent_at(p, drop_first=3)
    t0 = p.now
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.advance(2.0)
    assert sa.state is IkeState.ESTABLISHED
    assert [round(t - t0, 3) for t in times[:4]] == [0.0, 0.25, 0.55, 0.91]


def test_strongswan_schedule_when_early_is_off() -> None:
    p = make_pair(a_conf={"retransmit": RetransmitConfig(early_timeout=0)})
    times = _sent_at(p, drop_first=1)
    t0 = p.now
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.advance(5.0)
    assert sa.state is IkeState.ESTABLISHED and [round(t - t0, 3) for t in times[:2]] == [0.0, 4.0]


class _Prompt(Task):
    """An empty INFORMATIONAL somebody waits for."""

    prompt = True

    def build_i(self, sa, msg, now):  # type: ignore[no-untyped-def]
        return None

    def process_i(self, sa, msg, now):  # type: ignore[no-untyped-def]
        return Status.DONE


def test_request_in_flight_is_hurried_by_a_prompt_one_queued_behind() -> None:
    """Window 1 (RFC 7296 2.3): a lost DPD in flight would hold the prompt request back for the main
    schedule's 4 s, 7.2 s ...; once the prompt one waits, the DPD goes on the early schedule."""
    p = make_pair(a_conf={"dpd_delay": 10.0})
    sa = _up(p)
    times = _sent_at(p, drop_first=2)  # the DPD and its first retransmission are lost
    p.advance(10.0)  # DPD sent
    assert sa.outstanding is not None and not sa.outstanding.prompt
    t_dpd = times[0]
    p.advance(4.1)  # first retransmission after 4 s (main schedule), lost too
    assert [round(t - t_dpd, 3) for t in times] == [0.0, 4.0]
    sa.queue_task(_Prompt(), p.now)  # an ME_CONNECT, say
    assert sa.outstanding.prompt and sa.outstanding.deadline == pytest.approx(times[1] + 0.3)
    p.advance(1.0)
    assert [round(t - t_dpd, 3) for t in times[:4]] == [0.0, 4.0, 4.3, 4.3]  # DPD again, then the prompt one
    assert sa.outstanding is None and not sa.queue


def test_direct_setups_under_30_percent_loss_finish_within_30_s() -> None:
    """Each datagram is lost with probability 0.3 (seeded): IKE_SA_INIT + IKE_AUTH with the CHILD_SA
    always completes well within 30 s (strongSwan's schedule alone: about 1 in 7 took longer)."""
    rng = random.Random(7)
    took = []
    for _ in range(100):
        p = make_pair()
        p.drop = lambda side, data: rng.random() < 0.3
        t0 = p.now
        sa = p.a.initiate("home", now=p.now)
        p.pump()
        while sa.state is not IkeState.ESTABLISHED and p.now - t0 < 60:
            p.advance(0.05)
        assert sa.state is IkeState.ESTABLISHED and sa.children
        took.append(p.now - t0)
    took.sort()
    assert took[-1] < 30.0, took[-5:]
    print(f"100 setups under 30 % loss: median {took[50]:.2f} s, slowest {took[-1]:.2f} s")
