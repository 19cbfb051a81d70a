"""A virtual IP the peer assigns us (RFC 7296 §2.19, CFG_REPLY): the daemon's glue has the data plane put
it on an interface before the CHILD_SA using it is installed, keeps it while the IKE_SA (or the IKE_SA
rekeying it, §2.18) lives and removes it when that goes. Two sans-IO engines back to back, the glue over a
fake data plane that records the calls; tests/scenarios/test_rw_gateway.py checks the real TUN device.
"""

from __future__ import annotations

from typing import Any

from core_ike.ike import events as ev
from core_ike.ike.sa import IkeState
from tests.unit.daemon.test_glue_esp import FakeDataPlane, Glued
from tests.unit.ike.ike_pair import make_pair


class VipDataPlane(FakeDataPlane):
    def __init__(self, have: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.have = set(have)  # addresses the host has without us
        self.vips: set[str] = set()

    def add_vip(self, address: str) -> bool:
        self.calls.append(f"add_vip {address}")
        if address in self.have:
            return False
        self.vips.add(address)
        return True

    def del_vip(self, address: str) -> None:
        self.calls.append(f"del_vip {address}")
        self.vips.remove(address)


def _up(dp: VipDataPlane, pool: str = "10.99.0.0/30") -> tuple[Glued, Any]:
    p = make_pair(a_conf={"vips": ["0.0.0.0"]}, b_conf={"pools": [pool]})
    p.a.configs[0].children[0].local_ts = ["dynamic"]
    p.b.configs[0].children[0].remote_ts = ["dynamic"]
    g = Glued(p, dp, VipDataPlane())
    sa = p.a.initiate("home", now=p.now)
    g.run()
    assert sa.state is IkeState.ESTABLISHED
    return g, sa


def test_the_virtual_ip_is_installed_before_its_child_sa_and_removed_with_the_ike_sa() -> None:
    dp = VipDataPlane()
    g, sa = _up(dp)
    assert dp.vips == {"10.99.0.1"}
    assert dp.calls.index("add_vip 10.99.0.1") < dp.calls.index("install IN")  # the routes' source exists
    (assigned,) = g.of("a", ev.VirtualIpAssigned)
    assert assigned.ike_unique_id == sa.unique_id
    assert not g.of("b", ev.VirtualIpAssigned)  # the responder hands it out; it is not its own
    g.p.a.terminate(sa, g.p.now)
    g.run()
    assert g.of("a", ev.IkeSaDeleted) and dp.vips == set() and dp.calls[-1] == "del_vip 10.99.0.1"


def test_the_virtual_ip_stays_through_an_ike_rekey() -> None:
    dp = VipDataPlane()
    g, sa = _up(dp)
    g.p.a.rekey_ike(sa, g.p.now)
    g.run()
    (new,) = [e for e in g.of("a", ev.IkeSaEstablished) if e.rekeyed_from == sa.unique_id]
    assert g.of("a", ev.IkeSaDeleted) and dp.vips == {"10.99.0.1"}
    assert dp.calls.count("add_vip 10.99.0.1") == 1 and "del_vip 10.99.0.1" not in dp.calls
    successor = g.p.a.find_sa(new.unique_id)
    assert successor is not None
    g.p.a.terminate(successor, g.p.now)
    g.run()
    assert dp.vips == set()


def test_an_address_the_host_had_already_is_left_alone() -> None:
    dp = VipDataPlane(have=("10.99.0.1",))
    g, sa = _up(dp)
    g.p.a.terminate(sa, g.p.now)
    g.run()
    assert "add_vip 10.99.0.1" in dp.calls and "del_vip 10.99.0.1" not in dp.calls
