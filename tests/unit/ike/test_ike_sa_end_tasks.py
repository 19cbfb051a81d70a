"""The end of an IKE_SA tells every task it carried (docs/architecture.md "Tasks when the IKE_SA ends"):
the request in flight and the queued ones get `failed` with the reason of the end, once, so that what
they promised their callers is answered (an `up` waiting for a CHILD_SA gets ChildSaFailed at once, not
at its own timeout), without a second report of what the IKE_SA's own event already said."""

from __future__ import annotations

from ike_pair import Pair, make_pair

from core_ike.ike import events as ev
from core_ike.ike.context import IkeSaView, Status, Task
from core_ike.ike.sa import IkeSa, IkeState
from core_ike.ike.state import ChildState


def _up(p: Pair) -> IkeSa:
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED and len(sa.children) == 1
    p.events_a.clear()
    p.events_b.clear()
    return sa


def _lose_a_to_b(p: Pair) -> None:
    p.drop = lambda side, data: side == "a->b"


def test_peer_deletes_the_ike_sa_while_our_create_child_sa_is_in_flight() -> None:
    """The `up` of a second CHILD_SA crosses the peer's DELETE of the IKE_SA (RFC 7296 1.4.1): the
    CHILD_SA asked for fails at once with the reason (IkeSaDeleted alone names no CHILD_SA)."""
    p = make_pair()
    sa = _up(p)
    _lose_a_to_b(p)
    p.a.initiate("home", child="net", now=p.now)
    assert sa.outstanding is not None and sa.outstanding.exchange == 36  # CREATE_CHILD_SA
    p.drop = None
    p.b.terminate(p.b.ike_sas()[0], now=p.now)
    p.pump()
    assert sa.state is IkeState.DESTROYED
    assert [type(e) for e in p.events_a] == [ev.ChildSaDeleted, ev.IkeSaDeleted, ev.ChildSaFailed]
    (failed,) = p.of("a", ev.ChildSaFailed)
    assert failed.name == "net" and failed.reason == "deleted by peer"
    assert sa.queue == [] and sa.outstanding is None


def test_queued_requests_are_told_too() -> None:
    """Window 1 (RFC 7296 2.3): the second `up` waits behind the first; both are answered."""
    p = make_pair()
    sa = _up(p)
    _lose_a_to_b(p)
    p.a.initiate("home", child="net", now=p.now)
    p.a.initiate("home", child="net", now=p.now)
    assert len(sa.queue) == 1
    p.drop = None
    p.b.terminate(p.b.ike_sas()[0], now=p.now)
    p.pump()
    assert [e.reason for e in p.of("a", ev.ChildSaFailed)] == ["deleted by peer"] * 2
    assert sa.queue == []


def test_restarted_peer_invalid_ike_spi_answers_the_waiting_create_child_sa() -> None:
    """RFC 7296 2.21.4: the peer restarted and answers our CREATE_CHILD_SA with INVALID_IKE_SPI; the
    CHILD_SA asked for fails with that reason at once, not after the retransmissions."""
    p = make_pair()
    sa = _up(p)
    p.b = make_pair().b  # bob restarted: same address, no state
    p.a.initiate("home", child="net", now=p.now)
    p.pump()
    assert sa.state is IkeState.DESTROYED
    (failed,) = p.of("a", ev.ChildSaFailed)
    assert "INVALID_IKE_SPI" in failed.reason
    assert len(p.of("a", ev.IkeSaDeleted)) == 1


def test_down_while_connecting_answers_the_up() -> None:
    """A user's `down` of an IKE_SA whose IKE_AUTH is in flight: its CHILD_SA fails, terminated by user
    (no IkeSaFailed: nothing failed, and keyingtries must not start again what the user ended)."""
    p = make_pair()
    sa = p.a.initiate("home", now=p.now)
    p.drop = lambda side, data: side == "a->b" and sa.state is IkeState.CONNECTING and sa.my_mid == 1
    p.pump()
    assert sa.outstanding is not None and sa.outstanding.exchange == 35  # IKE_AUTH
    p.a.terminate(sa, now=p.now)
    p._drain()
    assert [(type(e), getattr(e, "reason", None)) for e in p.events_a] == \
        [(ev.ChildSaFailed, "terminated by user")]


def test_unreachable_peer_reports_the_ike_sa_failure_only() -> None:
    """IKE_SA_INIT unanswered: IkeSaFailed says why, for the CHILD_SA asked of it too; the CHILD_SA
    queued behind it does not repeat it (a status writer would replace the IKE_SA's reason)."""
    p = make_pair()
    p.drop = lambda side, data: True
    sa = p.a.initiate("home", now=p.now)
    p.advance(600)
    assert sa.state is IkeState.DESTROYED
    assert [type(e) for e in p.events_a] == [ev.IkeSaFailed]


def test_timeout_tells_each_task_once() -> None:
    """The retransmission timeout tells the tasks in flight, then destroys the SA: the end does not tell
    them again (one ChildSaFailed), and the task queued behind them is told by the end."""
    p = make_pair()
    sa = _up(p)
    p.drop = lambda side, data: True
    p.a.initiate("home", child="net", now=p.now)
    p.a.initiate("home", child="net", now=p.now)
    p.advance(600)
    assert sa.state is IkeState.DESTROYED
    reasons = [e.reason for e in p.of("a", ev.ChildSaFailed)]
    assert len(reasons) == 2 and all("giving up after" in r for r in reasons)


def test_rekey_in_flight_reports_no_failure_beside_the_deleted_child() -> None:
    """A CHILD_SA rekey in flight when the peer deletes the IKE_SA: the CHILD_SA's end is its
    ChildSaDeleted; the rekey adds no ChildSaFailed for it."""
    p = make_pair()
    sa = _up(p)
    (child,) = sa.children.values()
    _lose_a_to_b(p)
    p.a.rekey_child(sa, child.unique_id, now=p.now)
    p.drop = None
    p.b.terminate(p.b.ike_sas()[0], now=p.now)
    p.pump()
    assert [type(e) for e in p.events_a] == [ev.ChildSaDeleted, ev.IkeSaDeleted]
    assert child.state is ChildState.DELETED


def test_child_delete_in_flight_ends_with_the_ike_sa() -> None:
    p = make_pair()
    sa = _up(p)
    (child,) = sa.children.values()
    _lose_a_to_b(p)
    p.a.terminate_child(sa, child.unique_id, now=p.now)
    assert child.state is ChildState.DELETING
    p.drop = None
    p.b.terminate(p.b.ike_sas()[0], now=p.now)
    p.pump()
    assert [type(e) for e in p.events_a] == [ev.ChildSaDeleted, ev.IkeSaDeleted]
    assert child.state is ChildState.DELETED and p.a.ike_sas() == []


class _Probe(Task):
    """A task that records what it was told."""

    name = "PROBE"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def build_i(self, sa: IkeSaView, msg: object, now: float) -> None:  # type: ignore[override]
        pass

    def process_i(self, sa: IkeSaView, msg: object, now: float) -> Status:  # type: ignore[override]
        return Status.DONE

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        assert sa.state is IkeState.DESTROYED and sa.children == {}  # after the CHILD_SAs were removed
        self.calls.append(reason)


def test_in_flight_and_queued_tasks_are_told_once_with_the_reason() -> None:
    p = make_pair()
    sa = _up(p)
    calls: list[str] = []
    _lose_a_to_b(p)
    sa.queue_task(_Probe(calls), p.now)
    sa.queue_task(_Probe(calls), p.now)
    assert sa.outstanding is not None and len(sa.outstanding.tasks) == 1 and len(sa.queue) == 1  # window 1
    sa.destroy("the end", p.now)
    assert calls == ["the end"] * 2
    assert sa.outstanding is None and sa.queue == [] and sa.next_deadline() is None


def test_second_down_while_our_delete_is_unanswered_reports_the_deletion() -> None:
    """A `down` of an IKE_SA whose DELETE is unanswered (DELETING) ends it at once: it was established,
    so IkeSaDeleted says so (the daemon's glue and status writers learn it is gone), and the DELETE's
    task is told."""
    p = make_pair()
    sa = _up(p)
    _lose_a_to_b(p)
    p.a.terminate(sa, now=p.now)
    assert sa.state is IkeState.DELETING
    p.a.terminate(sa, now=p.now)
    p._drain()
    assert sa.state is IkeState.DESTROYED and p.a.ike_sas() == []
    assert [(type(e), getattr(e, "reason", None)) for e in p.events_a] == \
        [(ev.ChildSaDeleted, "terminated by user"), (ev.IkeSaDeleted, "terminated by user")]


def test_responder_down_retransmits_its_delete_past_the_half_open_timeout() -> None:
    """A `down` at the original responder whose DELETE goes unanswered: the DELETE is retransmitted on its
    schedule and the IKE_SA ends as deleted (IkeSaDeleted, "terminated by user"). The half-open timeout
    is for IKE_SAs never established: it cut such a DELETE short once the IKE_SA was older than
    half_open_timeout, and ended the IKE_SA as a failed setup (no IkeSaDeleted: status writers never
    heard of its end)."""
    p = make_pair()
    _up(p)
    (sb,) = p.b.ike_sas()
    p.drop = lambda side, data: True
    p.b.terminate(sb, now=p.now)
    p.advance(p.b.half_open_timeout + 1)
    assert sb.state is IkeState.DELETING
    p.advance(600)
    assert sb.state is IkeState.DESTROYED
    (deleted,) = p.of("b", ev.IkeSaDeleted)
    assert deleted.reason == "terminated by user"
    assert not p.of("b", ev.IkeSaFailed)
