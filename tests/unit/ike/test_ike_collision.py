"""Both peers initiate at once (a mediated connection started from both ends): one IKE_SA must survive.

With uniqueness "replace", deleting the older of its two SAs is not enough: each peer finishes its own SA
last, so they would delete one each and lose both. Both drop the one with the lowest nonce instead.
"""

from __future__ import annotations

import pytest
from ike_pair import A_IP, make_pair

from core_ike.ike import events as ev


@pytest.mark.parametrize("run", range(12))
def test_simultaneous_initiation_keeps_one_sa(run: int) -> None:
    p = make_pair()
    p.b.configs[0].remote_addrs = [A_IP]
    p.a.initiate("home", now=p.now)
    p.b.initiate("gw", now=p.now)
    p.pump()
    p.advance(1.0)
    sa_a = [s for s in p.a.ike_sas() if s.established]
    sa_b = [s for s in p.b.ike_sas() if s.established]
    assert len(sa_a) == 1 and len(sa_b) == 1
    assert (sa_a[0].spi_i, sa_a[0].spi_r) == (sa_b[0].spi_i, sa_b[0].spi_r)
    assert len(sa_a[0].children) == 1 and len(sa_b[0].children) == 1
    deleted = {e.unique_id for e in p.of("a", ev.IkeSaDeleted)}
    assert sa_a[0].unique_id not in deleted


def test_replace_still_replaces_an_old_sa() -> None:
    """Outside the collision window the new SA wins, whoever initiated it."""
    p = make_pair()
    p.b.configs[0].remote_addrs = [A_IP]
    old = p.a.initiate("home", now=p.now)
    p.pump()
    p.advance(10.0)
    p.b.initiate("gw", now=p.now)
    p.pump()
    p.advance(1.0)
    (new,) = [s for s in p.a.ike_sas() if s.established]
    assert new.unique_id != old.unique_id and not new.is_original_initiator
    assert old.unique_id in {e.unique_id for e in p.of("a", ev.IkeSaDeleted)}
