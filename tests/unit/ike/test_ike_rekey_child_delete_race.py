"""A CHILD_SA DELETE that races an IKE_SA rekey (RFC 7296 2.8, 2.18, 2.25.2), one datagram at a time.

One peer deletes a CHILD_SA (INFORMATIONAL) while the other rekeys the IKE_SA (CREATE_CHILD_SA), so both
requests cross on the old IKE_SA; the rekey moves the CHILD_SAs to the new IKE_SA. Whatever order the
datagrams arrive in, the deleted CHILD_SA must end on both sides (ChildSaDeleted, gone from the listing),
and a rekey responder's replacement waiting for it must get its outbound SA then, not at the old
CHILD_SA's expiry (docs/architecture.md "CHILD_SA rekeying").

The peer whose DELETE is in flight answers the IKE rekey with TEMPORARY_FAILURE (RFC 7296 2.25, as
strongSwan's ike_rekey does while a CHILD_SA is being deleted); the rekey is retried later. A peer that
answers such a rekey instead (RFC 7296 does not require the refusal) is emulated by letting its engine
accept it: its DELETE then arrives on the old IKE_SA after the move, and still ends the CHILD_SA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from ike_pair import Pair, make_pair

from core_ike.constants import NON_ESP_MARKER
from core_ike.daemon.control import sa_info
from core_ike.ike import events as ev
from core_ike.ike import task_manager
from core_ike.ike.engine import Engine
from core_ike.ike.sa import IkeSa, IkeState

Held = tuple[bytes, tuple[str, int], tuple[str, int]]


class Wire:
    """The pair with each direction's datagrams held until the test delivers them, one at a time."""

    def __init__(self, p: Pair) -> None:
        self.p = p
        self.held: dict[str, list[Held]] = {"a": [], "b": []}  # by receiving side

    def collect(self) -> None:
        for dst, src in (("b", self.p.a), ("a", self.p.b)):
            self.held[dst] += src.datagrams_to_send()
        self.p._drain()

    def deliver(self, to: str, index: int = 0) -> None:
        """Deliver the `index`th datagram held for side `to` (0: the oldest)."""
        self.collect()
        data, local, remote = self.held[to].pop(index)
        dst = self.p.engine(to)
        if remote[1] == dst.natt_port:
            data = data[len(NON_ESP_MARKER):]
        dst.receive(data, remote, local, self.p.now)
        dst.prepare()
        self.collect()

    def settle(self) -> None:
        """Deliver everything, in order, until both sides are quiet; then fire the timers of the next
        minute (a refused rekey is retried, RFC 7296 2.25)."""
        self.collect()
        for to in ("a", "b"):
            for data, local, remote in self.held[to]:
                dst = self.p.engine(to)
                dst.receive(data, remote, local, self.p.now)
                dst.prepare()
            self.held[to] = []
        self.p.pump()
        self.p.advance(60)


def _up(seed: int = 0) -> tuple[Wire, IkeSa, IkeSa]:
    p = make_pair(esp="aes128gcm16-x25519", seed=seed)
    p.a.initiate("home", now=p.now)
    p.pump()
    (sa_a,) = p.a.ike_sas()
    (sa_b,) = p.b.ike_sas()
    return Wire(p), sa_a, sa_b


def _sa(p: Pair, side: str) -> IkeSa:
    return next(iter(p.engine(side).ike_sas()))


def _live(p: Pair, side: str) -> set[int]:
    """CHILD_SAs the data plane holds: ChildSaEstablished minus ChildSaDeleted (each at most once)."""
    up = {e.unique_id for e in p.of(side, ev.ChildSaEstablished)}
    down = [e.unique_id for e in p.of(side, ev.ChildSaDeleted)]
    assert len(down) == len(set(down)), "a CHILD_SA was deleted twice"
    return up - set(down)


def _listed(eng: Engine, now: float) -> set[int]:
    """The CHILD_SAs `ikectl list` shows (core_ike/daemon/control.py sa_info), over all IKE_SAs."""
    return {c["uniqueid"] for sa in eng.ike_sas() for c in sa_info(sa, now)["child-sas"]}


def _assert_truthful(w: Wire, gone: dict[str, int]) -> None:
    """One IKE_SA per side, rekeyed (a refused rekey was retried), the same CHILD_SAs on both, the deleted
    one (`gone`: its id at each side) in no listing and no data plane."""
    p = w.p
    (sa_a,) = p.a.ike_sas()
    (sa_b,) = p.b.ike_sas()
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.rekeyed_from is not None and sa_b.rekeyed_from is not None
    for side, eng in (("a", p.a), ("b", p.b)):
        listed = _listed(eng, p.now)
        assert gone[side] not in listed, f"{side} still lists the deleted CHILD_SA"
        assert listed == _live(p, side)
    a_spis = {(c.spi_in, c.spi_out) for c in sa_a.children.values()}
    b_spis = {(c.spi_out, c.spi_in) for c in sa_b.children.values()}
    assert a_spis == b_spis


def _pair_ids(w: Wire, a_id: int) -> dict[str, int]:
    """CHILD_SA `a_id` of side a and the same CHILD_SA's id at side b."""
    ca = _sa(w.p, "a").children[a_id]
    (cb,) = (c for c in _sa(w.p, "b").children.values() if c.spi_in == ca.spi_out)
    return {"a": a_id, "b": cb.unique_id}


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def _start(w: Wire, deleter: str, victim: dict[str, int]) -> None:
    """`deleter` sends the DELETE of CHILD_SA `victim`, the other side the IKE rekey: both in flight."""
    p = w.p
    p.engine(deleter).terminate_child(_sa(p, deleter), victim[deleter], now=p.now)
    p.engine(_other(deleter)).rekey_ike(_sa(p, _other(deleter)), now=p.now)
    w.collect()
    assert len(w.held["a"]) == 1 and len(w.held["b"]) == 1


@contextmanager
def _answers_every_rekey(eng: Engine) -> Iterator[None]:
    """Emulate a peer that answers an IKE rekey while its CHILD_SA DELETE is in flight (RFC 7296 2.25.2
    does not require the refusal): no collision check at `eng` while it receives."""
    real_receive, real_check = eng.receive, task_manager.check_create_child

    def receive(*a: object, **kw: object) -> None:
        task_manager.check_create_child = lambda *_: None  # type: ignore[assignment]
        try:
            real_receive(*a, **kw)  # type: ignore[arg-type]
        finally:
            task_manager.check_create_child = real_check

    eng.receive = receive  # type: ignore[method-assign]
    try:
        yield
    finally:
        eng.receive = real_receive  # type: ignore[method-assign]


def _rekey_reaches_deleter(w: Wire, deleter: str, peer_answers: bool) -> None:
    if peer_answers:
        with _answers_every_rekey(w.p.engine(deleter)):
            w.deliver(deleter)
        assert _sa(w.p, deleter).state is IkeState.REKEYED  # answered: the CHILD_SAs moved
    else:
        w.deliver(deleter)
        assert _sa(w.p, deleter).state is IkeState.ESTABLISHED  # refused (TEMPORARY_FAILURE)


@pytest.mark.parametrize("deleter", ["a", "b"])
@pytest.mark.parametrize("peer_answers", [False, True], ids=["refused", "answered"])
@pytest.mark.parametrize("order", ["rekey-first", "delete-first", "answer-overtakes"])
def test_delete_crossing_an_ike_rekey_ends_the_child_sa(deleter: str, peer_answers: bool, order: str) -> None:
    """rekey-first: the rekey request reaches the deleter, its DELETE in flight, then the DELETE reaches the
    rekeyer; delete-first: the other way round; answer-overtakes: the deleter's answer to the rekey
    reaches the rekeyer before the DELETE sent earlier. Before the fix, the deleter moved the CHILD_SA
    (DELETING) to the new IKE_SA and the DELETE's answer on the old one ended nothing; and a DELETE that
    reached the rekeyer after it had moved the CHILD_SA was answered as for an unknown CHILD_SA."""
    w, sa_a, _ = _up()
    p = w.p
    p.a.initiate("home", child="net", now=p.now)  # a second CHILD_SA, which moves and stays
    p.pump()
    victim_a, keep = list(sa_a.children)
    victim = _pair_ids(w, victim_a)
    rekeyer = _other(deleter)
    _start(w, deleter, victim)
    if order == "delete-first":
        w.deliver(rekeyer)
        _rekey_reaches_deleter(w, deleter, peer_answers)
    else:
        _rekey_reaches_deleter(w, deleter, peer_answers)
        if order == "answer-overtakes":
            assert len(w.held[rekeyer]) == 2
            w.deliver(rekeyer, 1)
        w.deliver(rekeyer)
    w.settle()
    _assert_truthful(w, victim)
    assert list(_sa(p, "a").children) == [keep]


@pytest.mark.parametrize("deleter", ["a", "b"])
@pytest.mark.parametrize("peer_answers", [False, True], ids=["refused", "answered"])
@pytest.mark.parametrize("overtakes", [False, True], ids=["in-order", "answer-overtakes"])
def test_rekey_responder_switches_when_the_old_child_sa_ends(deleter: str, peer_answers: bool,
                                                             overtakes: bool) -> None:
    """The DELETE that crosses the IKE rekey is the CHILD_SA rekey initiator's DELETE of the old CHILD_SA:
    the rekey responder's replacement sends (ChildSaOutbound) when that DELETE arrives, not at expiry."""
    w, _, _ = _up()
    p = w.p
    rekeyer = _other(deleter)
    old = next(iter(_sa(p, deleter).children))
    victim = _pair_ids(w, old) if deleter == "a" else {"b": old, "a": _pair_ids_b(w, old)}
    p.engine(deleter).rekey_child(_sa(p, deleter), old, now=p.now)
    w.deliver(rekeyer)  # the CHILD_SA rekey request: the rekeyer's replacement waits for the old one's end
    (new_r,) = p.of(rekeyer, ev.ChildSaEstablished)[1:]
    assert new_r.outbound_deferred and new_r.rekeyed_from == victim[rekeyer]
    p.engine(rekeyer).rekey_ike(_sa(p, rekeyer), now=p.now)
    w.deliver(deleter)  # the CHILD_SA rekey answer: the deleter queues the DELETE of the old CHILD_SA...
    assert len(w.held[rekeyer]) == 1 and len(w.held[deleter]) == 1  # ...which crosses the IKE rekey
    _rekey_reaches_deleter(w, deleter, peer_answers)
    if overtakes:
        w.deliver(rekeyer, 1)
    w.deliver(rekeyer)  # the DELETE of the old CHILD_SA
    switch = p.of(rekeyer, ev.ChildSaOutbound)
    assert [(e.unique_id, e.replaces) for e in switch] == [(new_r.unique_id, victim[rekeyer])]
    w.settle()
    _assert_truthful(w, victim)
    (c,) = next(iter(p.engine(rekeyer).ike_sas())).children.values()
    assert c.unique_id == new_r.unique_id and c.state == "INSTALLED"


def _pair_ids_b(w: Wire, b_id: int) -> int:
    cb = _sa(w.p, "b").children[b_id]
    (ca,) = (c for c in _sa(w.p, "a").children.values() if c.spi_in == cb.spi_out)
    return ca.unique_id


def test_refusal_is_temporary_failure(caplog: pytest.LogCaptureFixture) -> None:
    """The refusal on the wire: TEMPORARY_FAILURE in the CREATE_CHILD_SA response (RFC 7296 2.25); the
    rekeyer keeps the IKE_SA and retries after `ike_rekey_retry`."""
    w, sa_a, sa_b = _up()
    p = w.p
    (ca,) = sa_a.children
    _start(w, "a", _pair_ids(w, ca))
    w.deliver("a")
    assert sa_a.state is IkeState.ESTABLISHED and sa_a.children
    with caplog.at_level("WARNING", logger="core_ike.ike"):
        w.deliver("b", 1)
    assert "rekeying failed: peer sent TEMPORARY_FAILURE" in caplog.text
    assert sa_b.state is IkeState.ESTABLISHED and sa_b.rekey_at == p.now + sa_b.config.ike_rekey_retry


@pytest.mark.parametrize("first", ["ike-rekey", "child-delete"])
def test_one_peer_deleting_and_rekeying_serializes_them(first: str) -> None:
    """The same peer deletes a CHILD_SA and rekeys the IKE_SA: one exchange at a time (window 1). A DELETE
    asked for while its IKE rekey is in flight goes on the new IKE_SA, and the old IKE_SA's own DELETE is
    the last request sent on it (RFC 7296 2.8); a rekey asked for while the DELETE is in flight waits."""
    w, sa_a, _ = _up()
    p = w.p
    (ca,) = sa_a.children
    victim = _pair_ids(w, ca)
    if first == "ike-rekey":
        p.a.rekey_ike(sa_a, now=p.now)
        p.a.terminate_child(sa_a, ca, now=p.now)
        assert [t.name for t in sa_a.queue] == ["CHILD_DELETE"]
        w.deliver("b")  # the rekey request
        w.deliver("a")  # its answer
        (new_a,) = (s for s in p.a.ike_sas() if s is not sa_a)
        assert sa_a.outstanding is not None and [t.name for t in sa_a.outstanding.tasks] == ["IKE_DELETE"]
        assert not sa_a.queue
        assert new_a.outstanding is not None and [t.name for t in new_a.outstanding.tasks] == ["CHILD_DELETE"]
    else:
        p.a.terminate_child(sa_a, ca, now=p.now)
        p.a.rekey_ike(sa_a, now=p.now)
        assert sa_a.outstanding is not None and [t.name for t in sa_a.outstanding.tasks] == ["CHILD_DELETE"]
        assert [t.name for t in sa_a.queue] == ["IKE_REKEY"] and sa_a.state is IkeState.ESTABLISHED
    w.settle()
    _assert_truthful(w, victim)


def _delete_lost_rekey_answered(deleter: str) -> tuple[Wire, dict[str, int], int, IkeSa]:
    """Two CHILD_SAs; the deleter's DELETE of one is lost and the deleter answers the other side's IKE
    rekey (the CHILD_SAs move, the victim DELETING): (wire, the victim's ids, the kept CHILD_SA's id at
    a, the deleter's old IKE_SA)."""
    w, sa_a, _ = _up()
    p = w.p
    p.a.initiate("home", child="net", now=p.now)
    p.pump()
    victim_a, keep = list(sa_a.children)
    victim = _pair_ids(w, victim_a)
    _start(w, deleter, victim)
    w.held[_other(deleter)].pop(0)  # the DELETE is lost
    _rekey_reaches_deleter(w, deleter, peer_answers=True)
    return w, victim, keep, _sa(p, deleter)


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_unanswered_when_the_old_ike_sa_ends_goes_again_on_the_successor(deleter: str) -> None:
    """The deleter's DELETE is lost; the deleter answers the rekey (the CHILD_SA moves, DELETING), and the
    rekeyer deletes the old IKE_SA: the end of the old IKE_SA tells the unanswered DELETE
    (ChildDelete.failed), which goes again on the successor (RFC 7296 2.8, 2.18). Without that the
    CHILD_SA stayed listed DELETING at the deleter and live at the rekeyer."""
    w, victim, keep, old = _delete_lost_rekey_answered(deleter)
    p, rekeyer = w.p, _other(deleter)
    w.deliver(rekeyer)  # the rekey's answer: the rekeyer deletes the old IKE_SA
    w.deliver(deleter)  # that DELETE: the old IKE_SA ends with our DELETE unanswered
    assert old.state is IkeState.DESTROYED
    w.settle()
    _assert_truthful(w, victim)
    assert list(_sa(p, "a").children) == [keep]


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_timed_out_on_the_old_ike_sa_goes_again_on_the_successor(deleter: str) -> None:
    """As above, but nothing gets through after the rekey's answer until both old IKE_SAs have given up:
    the deleter's DELETE runs out of retransmissions on the old IKE_SA (the rekeyer's DELETE of that
    IKE_SA, lost too, runs out on its side). Unanswered either way, the DELETE goes again on the
    successor (ChildDelete.failed): ending the CHILD_SA only at the deleter left it live at the rekeyer."""
    w, victim, keep, old = _delete_lost_rekey_answered(deleter)
    p, rekeyer = w.p, _other(deleter)
    w.deliver(rekeyer)  # the rekey's answer: the rekeyer deletes the old IKE_SA
    w.collect()
    w.held = {"a": [], "b": []}
    p.drop = lambda side, data: True  # every retransmission lost, until both old IKE_SAs gave up
    for _ in range(600):
        if old.state is IkeState.DESTROYED and len(p.engine(rekeyer).ike_sas()) == 1:
            break
        p.advance(1)
    p.drop = None
    assert old.state is IkeState.DESTROYED
    w.settle()
    _assert_truthful(w, victim)
    assert list(_sa(p, "a").children) == [keep]
