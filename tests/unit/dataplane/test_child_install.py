"""A CHILD_SA through the glue into the userspace data plane, with a fake kernel at the rtnetlink edge: the SAs
it installs (their transforms as the engine reports them by number), its policies, one route per remote
selector asked for once, and the same again for a second CHILD_SA with the same selectors; removing the
CHILD_SAs leaves nothing behind. The ESP SAs carry no attribute dictionary (a gateway holds two per CHILD_SA)."""

from __future__ import annotations

import ipaddress

import pytest

from core_ike.constants import EncrId, IntegId
from core_ike.daemon.glue import DataPlaneGlue
from core_ike.esp import EspSa
from core_ike.ike import events as ev
from core_ike.io.dataplane import Direction
from core_ike.io.userspace import UserspaceDataPlane

LOCAL = ipaddress.ip_address("10.200.0.1")


class FakeKernel:
    """The RouteSocket: the routes asked for and deleted, and every operation in order in `ops`."""

    def __init__(self) -> None:
        self.routes: list[tuple[object, int, object]] = []
        self.deleted: list[tuple[object, int | None]] = []
        self.ops: list[tuple[str, object]] = []

    def replace(self, dst: object, oif: int, prefsrc: object = None) -> None:
        self.routes.append((dst, oif, prefsrc))
        self.ops.append(("add", dst))

    def replace_prefix(self, version: int, prefixlen: int, addr: bytes, oif: int, prefsrc: object = None) -> None:
        """What the data plane calls (RouteSocket.replace with the destination in parts)."""
        self.replace(ipaddress.ip_network((addr, prefixlen)), oif, prefsrc)

    def delete(self, dst: object, table: int = 254, oif: int | None = None) -> None:
        self.deleted.append((dst, oif))
        self.ops.append(("del", dst))

    def close(self) -> None:
        pass


class FakeNetlink:
    """The worker's address list, current; anything else (a dump, a deletion) is recorded."""

    def __init__(self) -> None:
        self.submitted: list[object] = []
        self.addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ipaddress.IPv4Address("127.0.0.1"),
                                                                               LOCAL]

    def cached_addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return self.addresses  # the same list while it is current, as NetlinkWorker's

    def submit(self, fn: object) -> object:
        self.submitted.append(fn)

        class Done:
            def add_done_callback(self, _cb: object) -> None:
                pass

        return Done()

    def close(self) -> None:
        pass


def plane() -> tuple[UserspaceDataPlane, FakeKernel, FakeNetlink]:
    dp = UserspaceDataPlane(lambda d, addr: None)
    kernel, netlink = FakeKernel(), FakeNetlink()
    dp._routesock, dp._netlink, dp._tun_index = kernel, netlink, 7  # type: ignore[assignment]
    return dp, kernel, netlink


def child(uid: int, remote: str, encr: int = 20, bits: int = 128, integ: int = 0, reqid: int = 0) -> (
        ev.ChildSaEstablished):
    klen = bits // 8 + (4 if encr == 20 else 0)
    ilen = 32 if integ else 0
    keys = ev.ChildKeys(encr, bits, integ, False, 0x1000 + 2 * uid, 0x2000 + 2 * uid, bytes(klen), bytes(ilen),
                        bytes(klen), bytes(ilen))
    return ev.ChildSaEstablished("gw", 1, "net", uid, reqid or 100 + uid, ("192.0.2.1", 4500),
                                 ("192.0.2.2", 4500), True, (f"{LOCAL}/32",), (remote,), keys, "p")


@pytest.mark.parametrize(("encr", "bits", "integ"), [(20, 128, 0), (20, 256, 0), (12, 128, 12)])
def test_the_sas_get_the_transforms_the_engine_numbered(encr: int, bits: int, integ: int) -> None:
    dp, _, _ = plane()
    glue = DataPlaneGlue(dp)
    e = child(1, "10.201.0.5/32", encr, bits, integ)
    assert glue.handle(e) is e
    for (spi, d), st in dp._sas.items():
        assert st.params.encr_id is EncrId(encr) and st.params.integ_id is IntegId(integ)
        assert st.params.direction is d and spi == (0x1002 if d is Direction.IN else 0x2002)
        assert EncrId(encr).name in repr(st.params)
    assert {r.algorithm for r in dp.list_sas()} == {f"{EncrId(encr).name}_{bits}"
                                                    + (f"/{IntegId(integ).name}" if integ else "")}


def test_a_second_child_sa_with_the_same_selectors_shares_policies_and_route() -> None:
    dp, kernel, _ = plane()
    glue = DataPlaneGlue(dp)
    first, second = child(1, "10.201.0.5/32", reqid=9), child(2, "10.201.0.5/32", reqid=9)
    assert glue.handle(first) is first and glue.handle(second) is second
    assert kernel.routes == [(ipaddress.ip_network("10.201.0.5/32"), 7, LOCAL)]  # asked for once
    assert len(dp._policies) == 2 and len(dp.list_sas()) == 4
    glue.handle(ev.ChildSaDeleted("gw", "net", 1, 0x1002, 0x2002, ""))
    assert len(dp._policies) == 2 and kernel.deleted == []  # the other CHILD_SA of the reqid holds them
    glue.handle(ev.ChildSaDeleted("gw", "net", 2, 0x1004, 0x2004, ""))
    assert dp._policies == [] and dp.list_sas() == []
    assert kernel.deleted == [(ipaddress.ip_network("10.201.0.5/32"), 7)]  # the route into the TUN device deleted


def test_many_child_sas_each_one_route_and_all_gone_after() -> None:
    dp, kernel, _ = plane()
    glue = DataPlaneGlue(dp)
    n = 600
    for uid in range(1, n + 1):
        e = child(uid, f"10.201.{uid // 250}.{uid % 250 + 1}/32")
        assert glue.handle(e) is e
    assert len(kernel.routes) == n and len({r[0] for r in kernel.routes}) == n
    assert len(dp._policies) == 2 * n and len(dp.list_sas()) == 2 * n
    for uid in range(1, n + 1):
        glue.handle(ev.ChildSaDeleted("gw", "net", uid, 0x1000 + 2 * uid, 0x2000 + 2 * uid, ""))
    assert dp._policies == [] and dp.list_sas() == [] and len(kernel.deleted) == n
    assert dp._routes == {} and not dp._spd.ports


def test_a_road_warriors_old_route_never_takes_the_route_of_her_next_child_sa() -> None:
    """A road warrior's CHILD_SA goes and her next one, with the same virtual IP, comes: the old route's
    deletion reaches the kernel before the new route's addition, both from the loop's thread, nothing left
    to run later: a deletion queued on the netlink worker would run after the RouteSocket's addition and
    take the new CHILD_SA's route (its replies then have no way into the TUN device)."""
    dp, kernel, netlink = plane()
    glue = DataPlaneGlue(dp)
    vip = ipaddress.ip_network("10.3.0.3/32")
    old, new = child(1, "10.3.0.3/32", reqid=11), child(2, "10.3.0.3/32", reqid=12)
    assert glue.handle(old) is old
    glue.handle(ev.ChildSaDeleted("gw", "net", 1, 0x1002, 0x2002, ""))
    assert glue.handle(new) is new
    for fn in netlink.submitted:  # whatever was left to the worker runs now, after the addition
        fn(WorkerRoutes(kernel))  # type: ignore[operator]
    assert kernel.ops == [("add", vip), ("del", vip), ("add", vip)]  # the new route stays
    assert dp._routes == {(4, 32, int(vip.network_address)): 1}  # counted by the selector's net


class WorkerRoutes:
    """The worker's pyroute2 handle, writing its route operations into the same kernel log."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel

    def route(self, cmd: str, dst: str = "", **_kw: object) -> None:
        self.kernel.ops.append((cmd, ipaddress.ip_network(dst)))

    def get_addr(self) -> list[object]:
        return []


def test_esp_sas_have_no_attribute_dict_and_still_work() -> None:
    for sa_out, sa_in in ((EspSa(0x1234, EncrId(20), 128, bytes(20)), EspSa(0x1234, EncrId(20), 128, bytes(20))),
                          (EspSa(0x99, EncrId(12), 128, bytes(16), IntegId(12), bytes(32)),
                           EspSa(0x99, EncrId(12), 128, bytes(16), IntegId(12), bytes(32)))):
        assert not hasattr(sa_out, "__dict__")
        inner = bytes([0x45]) + bytes(39)
        assert sa_in.open(sa_out.seal(inner)) == (4, inner)


def test_policies_go_with_the_last_child_sa_of_their_reqid_in_any_order() -> None:
    dp, kernel, _ = plane()
    glue = DataPlaneGlue(dp)
    uids = list(range(1, 9))
    for uid in uids:  # two reqids, four CHILD_SAs each (rekeyed ones share their reqid)
        e = child(uid, f"10.201.0.{1 + uid % 2}/32", reqid=50 + uid % 2)
        assert glue.handle(e) is e
    again = child(3, "10.201.0.2/32", reqid=51)  # the same CHILD_SA reported twice counts once
    assert glue.handle(again) is again
    for uid in (8, 2, 5, 4, 6, 1, 7):
        glue.handle(ev.ChildSaDeleted("gw", "net", uid, 0x1000 + 2 * uid, 0x2000 + 2 * uid, ""))
        left = {50 + u % 2 for u in uids if u not in (8, 2, 5, 4, 6, 1, 7)[:(8, 2, 5, 4, 6, 1, 7).index(uid) + 1]}
        assert {p.reqid for p in dp._policies} == left and set(glue.policies) == left
    glue.handle(ev.ChildSaDeleted("gw", "net", 3, 0x1006, 0x2006, ""))
    assert dp._policies == [] and glue.policies == {} and glue.children == {} and len(kernel.deleted) == 2


def test_esp_sas_refuse_bad_keys_every_time_and_lay_out_each_suite() -> None:
    from core_ike.errors import LocalError

    for _ in range(2):  # a refusal is not remembered as a layout
        with pytest.raises(LocalError):
            EspSa(0x1234, EncrId(20), 128, bytes(19))
        with pytest.raises(LocalError):
            EspSa(0x1234, EncrId(20), 100, bytes(17))
        with pytest.raises(LocalError):
            EspSa(0x1234, EncrId(12), 128, bytes(16), IntegId(12), bytes(31))
    gcm8, gcm16 = EspSa(1, EncrId(18), 128, bytes(20)), EspSa(2, EncrId(20), 256, bytes(36))
    cbc = EspSa(3, EncrId(12), 256, bytes(32), IntegId(2), bytes(20))  # HMAC-SHA1-96
    assert (gcm8.icv_len, gcm16.icv_len, cbc.icv_len) == (8, 16, 12)
    assert (gcm8.overhead, gcm16.overhead, cbc.overhead) == (8 + 8 + 8 + 3 + 2, 8 + 8 + 16 + 3 + 2, 8 + 16 + 12 + 15 + 2)
