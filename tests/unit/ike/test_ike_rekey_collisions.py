"""Simultaneous rekeying and rekey/delete collisions (RFC 7296 2.8.1, 2.8.2, 2.25), driven in memory.

Both engines queue their request before either is delivered, so the requests cross on the wire: each peer
answers the other's rekey while its own is in flight. Which exchange made the redundant SA depends on the
random nonces, so the collision tests repeat until both outcomes occurred.
"""

from __future__ import annotations

from ike_pair import Pair, make_pair

from core_ike.ike import events as ev
from core_ike.ike.sa import IkeSa, IkeState


def _up(esp: str = "aes128gcm16-x25519", seed: int = 0) -> Pair:
    p = make_pair(esp=esp, seed=seed)  # the seed decides the nonces, so which colliding rekey wins
    p.a.initiate("home", now=p.now)
    p.pump()
    return p


def _only(p: Pair) -> tuple[IkeSa, IkeSa]:
    (sa_a,) = p.a.ike_sas()
    (sa_b,) = p.b.ike_sas()
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    return sa_a, sa_b


def _live_children(p: Pair, side: str) -> set[int]:
    """ChildSaEstablished minus ChildSaDeleted: what the data plane holds."""
    up = {e.unique_id for e in p.of(side, ev.ChildSaEstablished)}
    down = [e.unique_id for e in p.of(side, ev.ChildSaDeleted)]
    assert len(down) == len(set(down)), "a CHILD_SA was deleted twice"
    assert set(down) <= up
    return up - set(down)


def _assert_consistent(p: Pair) -> tuple[IkeSa, IkeSa]:
    sa_a, sa_b = _only(p)
    assert len(sa_a.children) == 1 and len(sa_b.children) == 1
    (ca,) = sa_a.children.values()
    (cb,) = sa_b.children.values()
    assert ca.state == "INSTALLED" and cb.state == "INSTALLED"
    assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in
    assert ca.keys is not None and cb.keys is not None and ca.keys.key_out == cb.keys.key_in
    assert _live_children(p, "a") == {ca.unique_id} and _live_children(p, "b") == {cb.unique_id}
    return sa_a, sa_b


def _rekey_and_delete_still_work(p: Pair) -> None:
    sa_a, _ = _only(p)
    (c,) = sa_a.children
    p.a.rekey_child(sa_a, c, now=p.now)
    p.pump()
    sa_a, sa_b = _assert_consistent(p)
    p.b.rekey_ike(sa_b, now=p.now)
    p.pump()
    sa_a, sa_b = _assert_consistent(p)
    p.a.terminate(sa_a, now=p.now)
    p.pump()
    assert not p.a.sas and not p.b.sas
    assert not _live_children(p, "a") and not _live_children(p, "b")


def test_simultaneous_child_rekey_both_nonce_orders() -> None:
    outcomes: set[str] = set()
    for seed in range(40):
        p = _up(seed=seed)
        sa_a, sa_b = _only(p)
        (old_a,) = sa_a.children.values()
        (old_b,) = sa_b.children.values()
        p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
        p.b.rekey_child(sa_b, old_b.unique_id, now=p.now)
        p.pump()
        _assert_consistent(p)
        est_a = p.of("a", ev.ChildSaEstablished)
        assert len(est_a) == 3 and len(p.of("b", ev.ChildSaEstablished)) == 3
        # both sides created two replacements; one was redundant and closed by its creator
        assert len(p.of("a", ev.ChildSaDeleted)) == 2 and len(p.of("b", ev.ChildSaDeleted)) == 2
        assert old_a.unique_id not in sa_a.children and old_b.unique_id not in sa_b.children
        (survivor,) = sa_a.children
        # A installs the SA of B's exchange (answering) before the one of its own exchange
        outcomes.add("a won" if survivor == est_a[2].unique_id else "b won")
        assert not p.of("a", ev.ChildSaFailed) and not p.of("b", ev.ChildSaFailed)
        if len(outcomes) == 2:
            break
    assert outcomes == {"a won", "b won"}
    _rekey_and_delete_still_work(p)


def test_child_rekey_crossing_child_delete() -> None:
    """RFC 7296 2.25.1: the CHILD_SA one peer rekeys is being deleted by the other: the delete wins,
    the rekey is refused with TEMPORARY_FAILURE without harming the IKE_SA."""
    for rekeyer in ("a", "b"):
        p = _up()
        sa_a, sa_b = _only(p)
        sa_r, sa_d = (sa_a, sa_b) if rekeyer == "a" else (sa_b, sa_a)
        p.engine(rekeyer).rekey_child(sa_r, next(iter(sa_r.children)), now=p.now)
        deleter = "b" if rekeyer == "a" else "a"
        p.engine(deleter).terminate_child(sa_d, next(iter(sa_d.children)), now=p.now)
        p.pump()
        sa_a, sa_b = _only(p)
        assert not sa_a.children and not sa_b.children
        assert not _live_children(p, "a") and not _live_children(p, "b")
        assert not p.of("a", ev.IkeSaDeleted) and not p.of("b", ev.IkeSaDeleted)
        p.advance(60)  # no retry of a rekey for a CHILD_SA that is gone
        assert not _live_children(p, "a") and not _live_children(p, "b")
        p.a.initiate("home", now=p.now)  # the IKE_SA still carries new CHILD_SAs
        p.pump()
        _assert_consistent(p)


def test_child_rekey_of_unknown_child_sa_not_found() -> None:
    """RFC 7296 2.25.1: CHILD_SA_NOT_FOUND ends our rekey; the IKE_SA and the CHILD_SA stay."""
    p = _up()
    sa_a, sa_b = _only(p)
    (cb,) = sa_b.children.values()
    cb.spi_out ^= 1  # B no longer knows the SPI A will name
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    p.pump()
    cb.spi_out ^= 1
    sa_a, sa_b = _only(p)
    (ca,) = sa_a.children.values()
    assert ca.state == "INSTALLED" and len(p.of("a", ev.ChildSaEstablished)) == 1


def test_simultaneous_ike_rekey_both_nonce_orders() -> None:
    outcomes: set[str] = set()
    for seed in range(40):
        p = _up(seed=seed)
        old_a, old_b = _only(p)
        (child_a,) = old_a.children.values()
        p.a.rekey_ike(old_a, now=p.now)
        p.b.rekey_ike(old_b, now=p.now)
        p.pump()
        sa_a, sa_b = _assert_consistent(p)
        assert sa_a.unique_id != old_a.unique_id and sa_b.unique_id != old_b.unique_id
        assert sa_a.children[child_a.unique_id] is child_a  # the CHILD_SA moved, it was not recreated
        # both sides made two new IKE_SAs; the redundant one and the old one are deleted once each
        for side in ("a", "b"):
            assert len(p.of(side, ev.IkeSaEstablished)) == 3
            deleted = [e.unique_id for e in p.of(side, ev.IkeSaDeleted)]
            assert len(deleted) == 2 and len(set(deleted)) == 2
            assert len(p.of(side, ev.ChildSaEstablished)) == 1 and not p.of(side, ev.ChildSaDeleted)
        outcomes.add("a won" if sa_a.is_original_initiator else "b won")
        if len(outcomes) == 2:
            break
    assert outcomes == {"a won", "b won"}
    _rekey_and_delete_still_work(p)


def test_ike_rekey_crossing_ike_delete() -> None:
    """RFC 7296 2.25.2: the delete wins; no new IKE_SA is left behind on either side."""
    for rekeyer in ("a", "b"):
        p = _up()
        sa_a, sa_b = _only(p)
        deleter = "b" if rekeyer == "a" else "a"
        p.engine(rekeyer).rekey_ike(sa_a if rekeyer == "a" else sa_b, now=p.now)
        p.engine(deleter).terminate(sa_b if rekeyer == "a" else sa_a, now=p.now)
        p.pump()
        p.advance(60)
        assert not p.a.sas and not p.b.sas
        for side in ("a", "b"):
            assert len(p.of(side, ev.IkeSaEstablished)) == 1 and len(p.of(side, ev.IkeSaDeleted)) == 1
            assert not _live_children(p, side)


def test_child_rekey_during_ike_rekey() -> None:
    """RFC 7296 2.25: the peer's CHILD_SA rekey on the IKE_SA we are rekeying gets TEMPORARY_FAILURE
    (and is retried later); our own queued CHILD_SA rekey continues on the new IKE_SA."""
    p = _up()
    sa_a, _sa_b = _only(p)
    p.a.rekey_ike(sa_a, now=p.now)
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)  # queued behind the IKE rekey
    assert len(sa_a.queue) == 1
    p.pump()
    new_a, new_b = _assert_consistent(p)
    assert new_a is not sa_a
    assert len(p.of("a", ev.ChildSaEstablished)) == 2 and len(p.of("b", ev.ChildSaEstablished)) == 2

    # now the crossing case: A rekeys the IKE_SA while B's CHILD_SA rekey is on its way
    p.b.rekey_child(new_b, next(iter(new_b.children)), now=p.now)
    p.a.rekey_ike(new_a, now=p.now)
    p.pump()
    # each refused the other's request with TEMPORARY_FAILURE; both retry later, nothing failed
    assert not p.of("a", ev.ChildSaFailed) and not p.of("b", ev.ChildSaFailed)
    p.advance(60)
    sa_a, _sa_b = _assert_consistent(p)
    assert sa_a is not new_a
    _rekey_and_delete_still_work(p)
