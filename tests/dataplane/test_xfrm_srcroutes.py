"""The XFRM data plane's source routes (core_ike/io/srcroutes.py), for real in a network namespace:
a virtual IP on `lo`, outbound policies, routes in table 220 with `src` the virtual IP (as charon's
kernel-netlink installs them), their rule, and their removal with the policies and at close.

What this kernel cannot run: it lacks INET_ESP, so no XFRM SA can be installed and no ESP packet
leaves; the routes and policies here are real, and the kernel's own route lookup (`ip route get`, a
UDP socket's connect) shows the source a packet would get. The last test drives the daemon's glue
(engine events -> data plane) with the SA installation stood in for (the one step this kernel refuses).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from core_ike.io.dataplane import Direction, PolicyAction, PolicyParams, TrafficSelector
from core_ike.io.srcroutes import RouteSettings
from core_ike.io.xfrm import XfrmDataPlane
from scenarios.lab.netns import wait_for
from tests.dataplane.noesp import NoEspXfrm
from tests.dataplane.xfrmns import inside_namespace, route_table, sh, veth

pytestmark = pytest.mark.netns

NS = f"srcrt{os.getpid() % 100000}"
VIP, PEER, HERE, GW = "10.3.0.7", "198.51.100.1", "192.0.2.10", "192.0.2.254"


def table(n: int = 220) -> str:
    return route_table(NS, n)


def rules() -> str:
    return sh("ip", "-n", NS, "rule")


@pytest.fixture
def netns() -> Iterator[None]:
    """x0 192.0.2.10/24 toward the peer (default route via 192.0.2.254), y0 10.1.0.1/16 inside; the
    road warrior's tunnels lead to 10.5.0.0/16."""
    with inside_namespace(NS, [*veth("x0", "x1"), ["addr", "add", f"{HERE}/24", "dev", "x0"],
                               *veth("y0", "y1"), ["addr", "add", "10.1.0.1/16", "dev", "y0"],
                               ["route", "add", "default", "via", GW]],
                          why="routes and XFRM policies in a network namespace"):
        yield  # sockets and threads made from here on live in the test namespace


def _dp(settings: RouteSettings | None = None) -> XfrmDataPlane:
    dp = XfrmDataPlane()
    dp.route_settings = settings
    return dp


def _pols(local: str, remote: str, peer: str = PEER, action: PolicyAction = PolicyAction.PROTECT,
          reqid: int = 5) -> list[PolicyParams]:
    lsel, rsel = TrafficSelector.parse(local), TrafficSelector.parse(remote)
    return [PolicyParams(lsel, rsel, d, reqid, HERE, peer, action) for d in (Direction.OUT, Direction.IN)]


def _source_toward(dst: str) -> str:
    """The source address the kernel picks for a packet to `dst` (what `ip route get` reports)."""
    out = sh("ip", "-n", NS, "route", "get", dst).split()
    return out[out.index("src") + 1]


def test_road_warrior_traffic_leaves_from_the_virtual_ip(netns: None) -> None:
    dp = _dp()
    try:
        assert _source_toward("10.5.2.3") == HERE  # before: the physical address
        assert dp.add_vip(VIP)
        for p in _pols(f"{VIP}/32", "10.5.0.0/16"):
            dp.install_policy(p)
        assert table() == f"10.5.0.0/16 via {GW} dev x0 proto static src {VIP}"
        assert "220:\tfrom all lookup 220" in rules()
        assert _source_toward("10.5.2.3") == VIP
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # what an application's socket gets
        try:
            s.connect(("10.5.2.3", 9))
            assert s.getsockname()[0] == VIP
        finally:
            s.close()
        assert _source_toward("203.0.113.5") == HERE  # outside the selectors: unchanged
        for p in _pols(f"{VIP}/32", "10.5.0.0/16"):
            dp.delete_policy(p)
        # the kernel's route table, read with a dump (no rtnetlink subscription here): a poll
        wait_for(lambda: table() == "", 5, what="the route removed with its policy")
        assert _source_toward("10.5.2.3") == HERE
        dp.del_vip(VIP)
    finally:
        dp.close()
    assert "lookup 220" not in rules()  # the rule goes with the data plane


def test_full_tunnel_and_a_gateway_route(netns: None) -> None:
    """0.0.0.0/0 as remote selector: a default route in table 220 only (the main table keeps its own;
    IKE and ESP to the peer leave from the sockets' bound address). A gateway's policy toward a road
    warrior's virtual IP names its inside address (inside its local selector) as the source; the peer
    is on-link, so it is its own next hop (as with charon)."""
    dp = _dp()
    try:
        dp.add_vip(VIP)
        for p in _pols(f"{VIP}/32", "0.0.0.0/0"):
            dp.install_policy(p)
        assert table() == f"default via {GW} dev x0 proto static src {VIP}"
        assert "default via 192.0.2.254 dev x0" in sh("ip", "-n", NS, "route", "show", "table", "main")
        assert _source_toward("203.0.113.5") == VIP
        for p in _pols("10.1.0.0/16", "10.3.0.9/32", peer="192.0.2.100", reqid=6):
            dp.install_policy(p)
        assert "10.3.0.9 via 192.0.2.100 dev x0 proto static src 10.1.0.1" in table().splitlines()
    finally:
        dp.close()
    assert table() == "" and "lookup 220" not in rules()


def test_trap_and_child_policies_share_the_route(netns: None) -> None:
    """The kernel keeps one policy per selector pair: a CHILD_SA's replaces the trap's, deleting it
    removes both, and the trap manager installs the trap again (core_ike/daemon/traps.py); the route
    follows the kernel's policies."""
    dp = _dp()
    try:
        sh("ip", "-n", NS, "addr", "add", "10.2.0.1/24", "dev", "y0")
        trap = _pols("10.2.0.0/24", "10.9.0.0/16", action=PolicyAction.TRAP)
        child = _pols("10.2.0.0/24", "10.9.0.0/16")
        for p in trap + child:
            dp.install_policy(p)
        assert table() == f"10.9.0.0/16 via {GW} dev x0 proto static src 10.2.0.1"
        for p in child:
            dp.delete_policy(p)  # the kernel's one policy is gone
        # the kernel's route table, read with a dump (no rtnetlink subscription here): a poll
        wait_for(lambda: table() == "", 5, what="the route removed with the kernel's policy")
        for p in trap:
            dp.install_policy(p)  # installed again: the route comes back
        assert table() == f"10.9.0.0/16 via {GW} dev x0 proto static src 10.2.0.1"
    finally:
        dp.close()


def test_no_source_address_no_route(netns: None) -> None:
    dp = _dp()
    try:
        for p in _pols("10.77.0.0/16", "10.5.0.0/16"):  # no address of ours inside: charon installs none
            dp.install_policy(p)
        assert table() == "" and "lookup 220" not in rules()
    finally:
        dp.close()


def test_settings(netns: None) -> None:
    dp = _dp(RouteSettings(install=False))
    try:
        dp.add_vip(VIP)
        for p in _pols(f"{VIP}/32", "10.5.0.0/16"):
            dp.install_policy(p)
        assert table() == "" and "lookup 220" not in rules() and _source_toward("10.5.2.3") == HERE
    finally:
        dp.close()
    dp = _dp(RouteSettings(table=100, priority=150))
    try:
        dp.add_vip(VIP)
        for p in _pols(f"{VIP}/32", "10.5.0.0/16"):
            dp.install_policy(p)
        assert table(100) == f"10.5.0.0/16 via {GW} dev x0 proto static src {VIP}"
        assert "150:\tfrom all lookup 100" in rules()
    finally:
        dp.close()
    assert table(100) == "" and "lookup 100" not in rules()


def test_a_rule_there_before_is_used_and_removed_when_the_table_empties(netns: None) -> None:
    """A rule left by a daemon that died (or made by hand) serves; at stop it goes like ours, as charon
    removes its rule."""
    sh("ip", "-n", NS, "rule", "add", "priority", "220", "table", "220")
    dp = _dp()
    try:
        dp.add_vip(VIP)
        for p in _pols(f"{VIP}/32", "10.5.0.0/16"):
            dp.install_policy(p)
        assert table() != "" and rules().count("lookup 220") == 1
    finally:
        dp.close()
    assert table() == "" and "lookup 220" not in rules()


def test_daemon_glue_installs_the_route_after_the_virtual_ip(netns: None) -> None:
    """The engine's events in the order an IKE_AUTH with a CFG_REPLY gives them (RFC 7296 2.19): the
    virtual IP, then the CHILD_SA with it as local selector; then the IKE_SA goes."""
    from core_ike.daemon.glue import DataPlaneGlue
    from core_ike.ike import events as ev

    dp = NoEspXfrm()
    glue = DataPlaneGlue(dp)
    keys = ev.ChildKeys(encr_id=20, key_bits=128, integ_id=0, esn=False, spi_in=0xC1, spi_out=0xC2,
                        key_in=bytes(20), integ_in=b"", key_out=bytes(20), integ_out=b"")
    try:
        glue.handle(ev.VirtualIpAssigned("rw", 1, VIP))
        child = ev.ChildSaEstablished("rw", 1, "net", 7, 3, (HERE, 4500), (PEER, 4500), True, (f"{VIP}/32",),
                                      ("10.5.0.0/16",), keys, "AES_GCM_16_128")
        assert glue.handle(child) is child  # installed
        assert table() == f"10.5.0.0/16 via {GW} dev x0 proto static src {VIP}"
        assert _source_toward("10.5.2.3") == VIP
        glue.handle(ev.ChildSaDeleted("rw", "net", 7, 0xC1, 0xC2, "deleted"))
        glue.handle(ev.IkeSaDeleted("rw", 1, "deleted"))
        # the kernel's route table, read with a dump (no rtnetlink subscription here): a poll
        wait_for(lambda: table() == "", 5, what="the route removed with the CHILD_SA")
        assert VIP not in sh("ip", "-n", NS, "addr", "show", "dev", "lo") and dp.sas == []
    finally:
        dp.close()


def test_addresses_come_from_the_kernels_notifications(netns: None) -> None:
    """With the daemon's event loop running, a route's source comes from the address list the kernel's
    notifications keep current: an address added behind our back is used, without a dump per route."""
    import asyncio

    async def main() -> tuple[str, int]:
        dp = _dp()
        dp.start(asyncio.get_running_loop())
        try:
            routes = dp.source_routes()
            assert routes is not None
            worker, loop, dumped = routes.worker, asyncio.get_running_loop(), asyncio.Event()
            dump = worker.addresses

            def addresses(ipr: Any) -> Any:
                """The worker's dump (which the notification, read by this loop, queues): our wake-up."""
                try:
                    return dump(ipr)
                finally:
                    loop.call_soon_threadsafe(dumped.set)

            worker.addresses = addresses  # type: ignore[method-assign]
            sh("ip", "-n", NS, "addr", "add", "10.6.0.1/32", "dev", "lo")
            async with asyncio.timeout(10):  # a deadline; each check follows a dump
                while not any(str(a) == "10.6.0.1" for a in worker.cached_addresses() or []):
                    dumped.clear()
                    await dumped.wait()
            dumps = routes.worker.dumps
            for p in _pols("10.6.0.1/32", "10.5.0.0/16") + _pols("10.1.0.0/16", "10.3.0.9/32", reqid=6):
                dp.install_policy(p)
            return table(), routes.worker.dumps - dumps
        finally:
            dp.close()

    routes, dumps = asyncio.run(main())
    assert [r.strip() for r in routes.splitlines()] == [f"10.3.0.9 via {GW} dev x0 proto static src 10.1.0.1",
                                                        f"10.5.0.0/16 via {GW} dev x0 proto static src 10.6.0.1"]
    assert dumps == 0


def test_ipv6_selectors_over_ipv4(netns: None) -> None:
    """An IPv6 virtual IP and selectors inside IPv4 ESP: the IPv6 rule and a route through the device
    toward the IPv4 peer (its IPv4 next hop cannot serve an IPv6 route)."""
    dp = _dp()
    try:
        assert dp.add_vip("fd00:3::7")
        for p in _pols("fd00:3::7/128", "fd00:5::/64"):
            dp.install_policy(p)
        six = sh("ip", "-6", "-n", NS, "route", "show", "table", "220").split()
        assert six[:3] == ["fd00:5::/64", "dev", "x0"] and six[six.index("src") + 1] == "fd00:3::7"
        assert "220:\tfrom all lookup 220" in sh("ip", "-6", "-n", NS, "rule")
        assert table() == ""  # nothing in the IPv4 table
    finally:
        dp.close()
    assert "lookup 220" not in sh("ip", "-6", "-n", NS, "rule")


def test_the_rule_stays_while_another_process_has_routes(netns: None) -> None:
    """Two data planes sharing table 220 (iked's workers): the one that added the rule stops first; the
    rule stays for the other's routes and goes when the last one stops."""
    first, second = _dp(), _dp()
    try:
        sh("ip", "-n", NS, "addr", "add", "10.2.0.1/24", "dev", "y0")
        for p in _pols(f"{HERE}/32", "10.5.0.0/16"):
            first.install_policy(p)
        for p in _pols("10.2.0.0/24", "10.9.0.0/16", reqid=8):
            second.install_policy(p)
        assert len(table().splitlines()) == 2
    finally:
        first.close()
    assert table().startswith("10.9.0.0/16") and "220:\tfrom all lookup 220" in rules()
    second.close()
    assert table() == "" and "lookup 220" not in rules()
