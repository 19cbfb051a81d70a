"""The choices behind the XFRM data plane's source routes (core_ike/io/srcroutes.py): which of our
addresses is the source, which route leads to the peer. Pure functions over what netlink reports;
tests/dataplane/test_xfrm_srcroutes.py installs the routes in a network namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from core_ike.daemon.config import load
from core_ike.errors import LocalError
from core_ike.io.dataplane import Direction, PolicyParams, TrafficSelector
from core_ike.io.srcroutes import RouteRow, SourceRoute, pick_nexthop, pick_source, plan_route

ip = ipaddress.ip_address
net = ipaddress.ip_network


def row(dst: str, table: int = 254, gateway: str | None = None, oif: int | None = 2, priority: int = 0,
        rtype: int = 1) -> RouteRow:
    return RouteRow(net(dst), table, rtype, priority, gateway, oif)


MAIN = [row("0.0.0.0/0", gateway="192.0.2.254", priority=100), row("192.0.2.0/24", oif=2),
        row("0.0.0.0/0", gateway="192.0.2.253", priority=50, oif=3), row("::/0", gateway="fe80::1", oif=2),
        row("192.0.2.10/32", table=255, rtype=2, oif=2)]


def test_source_is_an_address_inside_the_local_selector() -> None:
    addrs = [ip("192.0.2.10"), ip("2001:db8::10"), ip("10.3.0.7"), ip("10.1.0.1")]
    assert pick_source(addrs, net("10.3.0.7/32")) == ip("10.3.0.7")  # a road warrior's virtual IP
    assert pick_source(addrs, net("10.1.0.0/16")) == ip("10.1.0.1")  # a gateway's inside address
    assert pick_source(addrs, net("2001:db8::/64")) == ip("2001:db8::10")
    assert pick_source(addrs, net("10.9.0.0/16")) is None  # none: no route (charon installs none either)


def test_nexthop_longest_prefix_then_lowest_metric_outside_our_table() -> None:
    assert pick_nexthop(MAIN, ip("198.51.100.1"), 220) == MAIN[2]  # metric 50 beats 100
    assert pick_nexthop(MAIN, ip("192.0.2.100"), 220) == MAIN[1]  # on-link: no gateway
    # a default route in our own table (a full tunnel's) is not the way to the peer
    ours = [row("0.0.0.0/0", table=220, gateway="10.9.9.9", oif=7), row("198.51.100.0/24", table=220, oif=7)]
    assert pick_nexthop(ours + MAIN, ip("198.51.100.1"), 220) == MAIN[2]
    assert pick_nexthop(MAIN, ip("2001:db8::1"), 220) == MAIN[3]
    assert pick_nexthop([row("10.0.0.0/8")], ip("198.51.100.1"), 220) is None


def _policy(local: str, remote: str, peer: str = "198.51.100.1") -> PolicyParams:
    return PolicyParams(TrafficSelector.parse(local), TrafficSelector.parse(remote), Direction.OUT, 1,
                        "192.0.2.10", peer)


def test_plan_route() -> None:
    addrs = [ip("192.0.2.10"), ip("10.3.0.7")]
    assert plan_route(_policy("10.3.0.7/32", "10.1.0.0/16"), addrs, MAIN, 220) == \
        SourceRoute(net("10.1.0.0/16"), "10.3.0.7", "192.0.2.253", 3, 220)
    assert plan_route(_policy("10.3.0.7/32", "0.0.0.0/0"), addrs, MAIN, 100) == \
        SourceRoute(net("0.0.0.0/0"), "10.3.0.7", "192.0.2.253", 3, 100)
    # an on-link peer is its own next hop (as charon's get_nexthop falls back to the destination)
    assert plan_route(_policy("10.1.0.0/16", "10.3.0.9/32", peer="192.0.2.100"), [ip("10.1.0.1")], MAIN, 220) == \
        SourceRoute(net("10.3.0.9/32"), "10.1.0.1", "192.0.2.100", 2, 220)
    # IPv6 selectors inside IPv4 ESP: the device toward the peer, no IPv4 next hop for an IPv6 route
    assert plan_route(_policy("2001:db8::7/128", "2001:db8:1::/48"), [ip("2001:db8::7")], MAIN, 220) == \
        SourceRoute(net("2001:db8:1::/48"), "2001:db8::7", None, 3, 220)
    assert plan_route(_policy("10.9.0.0/16", "10.1.0.0/16"), addrs, MAIN, 220) == "no local address in 10.9.0.0/16"
    assert plan_route(_policy("10.3.0.7/32", "10.1.0.0/16"), addrs, [], 220) == "no route to the peer 198.51.100.1"


def test_daemon_settings(tmp_path: Path) -> None:
    f = tmp_path / "iked.toml"
    f.write_text("[daemon]\n")
    st = load(f).settings
    assert (st.install_routes, st.routing_table, st.routing_table_prio) == (True, 220, 220)  # charon's
    f.write_text("[daemon]\ninstall_routes = false\nrouting_table = 100\nrouting_table_prio = 150\n")
    st = load(f).settings
    assert (st.install_routes, st.routing_table, st.routing_table_prio) == (False, 100, 150)
    for bad, words in (("routing_table = 254", "254 is the kernel's default/main/local table"),
                       ("routing_table = 0", "expected an integer"), ("routing_table_prio = 32766", "1-32765"),
                       ('install_routes = "yes"', "install_routes")):
        f.write_text(f"[daemon]\n{bad}\n")
        with pytest.raises(LocalError, match=words):
            load(f)
