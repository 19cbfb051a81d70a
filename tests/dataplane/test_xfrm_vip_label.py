"""An IPv6 virtual IP on the XFRM data plane gets an address label (RFC 6724 §2.1), as charon's
kernel-netlink gives it where routes can name an IPv6 source: the kernel's source address selection
uses the virtual IP toward the tunnel's remote selectors (our route in table 220 names it) and, by
rule 6 (prefer a matching label), not toward a destination outside the tunnels that it would otherwise
win by rule 8 (longest matching prefix). All real, in a network namespace: the label, the route, and
the kernel's choice (`ip -6 route get`, a UDP socket's connect).

The host: IPv4 toward the IPv4 peer on x0 (IPv6 there is link-local only, the default IPv6 route leaves
through it), a global IPv6 address on the inside interface y0, the virtual IP 2001:db8:3::7 on `lo`;
the tunnel carries 2001:db8:5::/64 inside IPv4 ESP (the dual-stack road warrior). For 2001:db8:3::99,
outside the tunnel, rules 1-5 of RFC 6724 §5 tie between y0's address and the virtual IP (neither is on
the outgoing interface), and rule 8 would pick the virtual IP.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from core_ike.io.dataplane import Direction, PolicyParams, TrafficSelector
from core_ike.io.srcroutes import VIP_LABEL, RouteSettings
from core_ike.io.xfrm import XfrmDataPlane
from tests.dataplane.xfrmns import inside_namespace, sh, veth

pytestmark = pytest.mark.netns

NS = f"viplbl{os.getpid() % 100000}"
VIP, INSIDE, HERE, PEER = "2001:db8:3::7", "2001:db8:1::1", "192.0.2.10", "192.0.2.254"
TUNNEL, NEAR = "2001:db8:5::1", "2001:db8:3::99"  # inside the remote selector / outside, near the VIP


def labels() -> str:
    return sh("ip", "-n", NS, "-6", "addrlabel", "list")


def source(dst: str) -> str:
    """The source the kernel picks for a packet to `dst` (`ip -6 route get`)."""
    out = sh("ip", "-n", NS, "-6", "route", "get", dst).split()
    return out[out.index("src") + 1]


def connected_source(dst: str) -> str:
    """What an application's UDP socket to `dst` gets (the kernel's choice at connect)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.connect((dst, 9))
        return str(s.getsockname()[0])
    finally:
        s.close()


@pytest.fixture
def netns() -> Iterator[None]:
    with inside_namespace(NS, [*veth("x0", "x1"), *veth("y0", "y1"), ["addr", "add", f"{HERE}/24", "dev", "x0"],
                               ["-6", "addr", "add", f"{INSIDE}/64", "dev", "y0", "nodad"],
                               ["-6", "route", "add", "default", "via", "fe80::1", "dev", "x0"]],
                          why="address labels, routes and XFRM policies in a network namespace"):
        yield


def _policies() -> list[PolicyParams]:
    lsel, rsel = TrafficSelector.parse(f"{VIP}/128"), TrafficSelector.parse("2001:db8:5::/64")
    return [PolicyParams(lsel, rsel, d, 5, HERE, PEER) for d in (Direction.OUT, Direction.IN)]


def test_the_virtual_ip_is_the_source_toward_the_tunnel_and_not_outside_it(netns: None) -> None:
    dp = XfrmDataPlane()
    try:
        assert dp.add_vip(VIP)
        assert f"prefix {VIP}/128 label {VIP_LABEL}" in labels()
        for p in _policies():
            dp.install_policy(p)
        assert source(TUNNEL) == VIP and connected_source(TUNNEL) == VIP  # our route's src
        assert source(NEAR) == INSIDE and connected_source(NEAR) == INSIDE  # rule 6: the label differs
        # the label is what decides: without it the kernel takes the virtual IP (rule 8) outside the tunnel
        sh("ip", "-n", NS, "-6", "addrlabel", "del", "prefix", f"{VIP}/128", "label", str(VIP_LABEL))
        assert source(NEAR) == VIP
        sh("ip", "-n", NS, "-6", "addrlabel", "add", "prefix", f"{VIP}/128", "label", str(VIP_LABEL))
        for p in _policies():
            dp.delete_policy(p)
        dp.del_vip(VIP)
        assert f"{VIP}/128" not in labels()  # goes with the address
    finally:
        dp.close()


def test_the_label_goes_at_close_and_is_not_set_without_routes(netns: None) -> None:
    dp = XfrmDataPlane()
    try:
        dp.add_vip(VIP)
        dp.add_vip("10.3.0.7")  # IPv4 has no address labels
        assert labels().count(f"label {VIP_LABEL}") == 1
    finally:
        dp.close()
    assert f"{VIP}/128" not in labels()
    dp = XfrmDataPlane()
    dp.route_settings = RouteSettings(install=False)  # no route would name the virtual IP: no label
    try:
        dp.add_vip(VIP)
        assert f"{VIP}/128" not in labels() and source(NEAR) == VIP
    finally:
        dp.close()
