"""The userspace data plane's routes into its TUN device, with a fake kernel at the rtnetlink edge: a
route the kernel refuses fails the CHILD_SA and leaves nothing behind, so that a later CHILD_SA with the
same remote selector asks the kernel again (and is not installed without its route)."""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import NetlinkError  # type: ignore[import-untyped]

from core_ike.daemon.glue import DataPlaneGlue
from core_ike.ike import events as ev
from core_ike.io.dataplane import Direction, IPNetwork
from core_ike.io.userspace import UserspaceDataPlane

LOCAL = ipaddress.ip_address("10.200.0.1")


class FakeKernel:
    """Stands in for `RouteSocket`: records the routes it takes, refuses those to `refused` (ENODEV,
    as for a TUN device that went away)."""

    def __init__(self) -> None:
        self.refused: set[IPNetwork] = set()
        self.routes: list[tuple[IPNetwork, int, object]] = []

    def replace(self, dst: IPNetwork, oif: int, prefsrc: object = None) -> None:
        if dst in self.refused:
            raise NetlinkError(errno.ENODEV, "No such device")
        self.routes.append((dst, oif, prefsrc))

    def replace_prefix(self, version: int, prefixlen: int, addr: bytes, oif: int, prefsrc: object = None) -> None:
        """What the data plane calls (RouteSocket.replace with the destination in parts)."""
        self.replace(ipaddress.ip_network((addr, prefixlen)), oif, prefsrc)

    def delete(self, dst: IPNetwork, table: int = 254, oif: int | None = None) -> None:
        self.routes = [r for r in self.routes if (r[0], r[1]) != (dst, oif)]

    def close(self) -> None:
        pass


class FakeNetlink:
    """The worker's address list, current (the host's addresses: one inside the local selector)."""

    def cached_addresses(self) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("127.0.0.1"), LOCAL]

    def close(self) -> None:
        pass


def plane() -> tuple[UserspaceDataPlane, FakeKernel]:
    dp = UserspaceDataPlane(lambda d, addr: None)
    kernel = FakeKernel()
    dp._routesock, dp._netlink, dp._tun_index = kernel, FakeNetlink(), 7  # type: ignore[assignment]
    return dp, kernel


def child(uid: int, remote: str) -> ev.ChildSaEstablished:
    keys = ev.ChildKeys(20, 128, 0, False, 0x1000 + 2 * uid, 0x2000 + 2 * uid, bytes(20), b"", bytes(20), b"")
    return ev.ChildSaEstablished("gw", uid, "net", 100 + uid, uid, ("192.0.2.1", 4500), ("192.0.2.2", 4500), True,
                                 (f"{LOCAL}/32",), (remote,), keys, "AES_GCM_16_128")


def test_a_refused_route_fails_the_child_sa_and_a_later_one_asks_again() -> None:
    dp, kernel = plane()
    glue = DataPlaneGlue(dp)
    net = ipaddress.ip_network("10.201.0.5/32")
    kernel.refused.add(net)
    failed = glue.handle(child(1, "10.201.0.5/32"))
    assert isinstance(failed, ev.ChildSaFailed) and "No such device" in failed.reason
    assert dp.list_sas() == [] and dp._policies == [] and kernel.routes == []  # nothing of it stays
    kernel.refused.clear()
    ok = child(2, "10.201.0.5/32")  # the same remote selector again: its route is asked for again
    assert glue.handle(ok) is ok
    assert kernel.routes == [(net, 7, LOCAL)]  # with our address inside the local selector as source
    assert {p.direction for p in dp._policies} == {Direction.IN, Direction.OUT}
    assert {(r.spi, r.direction) for r in dp.list_sas()} == {(0x1004, "in"), (0x2004, "out")}


def test_each_remote_selector_gets_its_route() -> None:
    dp, kernel = plane()
    glue = DataPlaneGlue(dp)
    for uid, remote in ((1, "10.201.0.5/32"), (2, "10.201.0.6/32")):
        e = child(uid, remote)
        assert glue.handle(e) is e
    assert [r[0] for r in kernel.routes] == [ipaddress.ip_network("10.201.0.5/32"),
                                             ipaddress.ip_network("10.201.0.6/32")]
