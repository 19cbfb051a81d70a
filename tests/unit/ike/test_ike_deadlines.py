"""An IKE_SA's next deadline (TaskManager.next_deadline) is the earliest of every timer it keeps: the
request in flight (RFC 7296 2.1), IKE and CHILD_SA rekeying and expiry (2.8), liveness (1.4), NAT
keepalives (RFC 3948 4), the half-open timeout (an IKE_SA never established) and fragment reassembly (RFC 7383 2.6)."""

from __future__ import annotations

import random

from ike_pair import make_pair

from core_ike.ike.sa import IkeSa, IkeState
from core_ike.ike.task_manager import Outstanding


def _reference(sa: IkeSa) -> float | None:
    """The deadlines listed one by one, the earliest taken."""
    if sa.state is IkeState.DESTROYED:
        return None
    ds: list[float] = []
    if sa.outstanding is not None:
        ds.append(sa.outstanding.deadline)
    if sa.rekey_at is not None:
        ds.append(sa.rekey_at)
    for c in sa.children.values():
        ds += [t for t in (c.rekey_at, c.expire_at) if t is not None]
    cfg = sa.config
    if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
        if cfg.dpd_delay > 0 and not sa.dpd_pending and sa.outstanding is None \
                and sa.state is IkeState.ESTABLISHED:
            ds.append(sa.last_in + cfg.dpd_delay)
        if sa.nat_here and cfg.keepalive_interval > 0:
            ds.append(sa.last_out + cfg.keepalive_interval)
    elif not sa.is_original_initiator and sa.established_at is None:  # half-open: never established
        ds.append(sa.created_at + sa.engine.half_open_timeout)
    return min(ds) if ds else None


def test_next_deadline_is_the_earliest_timer() -> None:
    p = make_pair(a_conf={"dpd_delay": 30.0, "keepalive_interval": 20.0})
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED and sa.children
    responder = next(iter(p.b.ike_sas()))
    rnd = random.Random(7)
    maybe = lambda: rnd.choice([None, rnd.uniform(900.0, 1200.0)])  # noqa: E731
    seen = set()
    for _ in range(400):
        for s in (sa, responder):
            s.set_state(rnd.choice([IkeState.CREATED, IkeState.CONNECTING, IkeState.ESTABLISHED,
                                    IkeState.REKEYING, IkeState.DELETING]))
            s.rekey_at = maybe()
            s.established_at = rnd.choice([None, 1000.0])  # never established (half-open), or once
            s.dpd_pending = rnd.random() < 0.3
            s.nat_here = rnd.random() < 0.5
            s.last_in, s.last_out = rnd.uniform(900.0, 1100.0), rnd.uniform(900.0, 1100.0)
            deadline = maybe()
            s.tm.outstanding = None if deadline is None else Outstanding(1, 37, [], [], 0, deadline)
            for c in s.children.values():
                c.rekey_at, c.expire_at = maybe(), maybe()
            want = _reference(s)
            assert s.next_deadline() == want
            seen.add(want is None)
    assert seen == {True, False}  # both outcomes met
    sa.set_state(IkeState.DESTROYED)
    assert sa.next_deadline() is None
