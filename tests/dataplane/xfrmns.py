"""A test network namespace for the XFRM data plane's tests, and what the kernel shows in one: the
source routes in table 220 (`ip route show table 220`) and the templates of the XFRM policies
(`ip xfrm policy`). Read through iproute2, as an operator would; the lab's hosts are namespaces too
(`Lab.ns(host)`)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tests.guards import require


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def route_table(ns: str, table: int = 220) -> str:
    """The routes of `table` in namespace `ns`, "" when it has none."""
    r = subprocess.run(["ip", "-n", ns, "route", "show", "table", str(table)], capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip() if r.returncode == 0 else ""  # a table without routes does not exist


def policy_templates(ns: str) -> set[tuple[str, str, str]]:
    """(direction, tmpl src, tmpl dst) of every XFRM policy in namespace `ns`."""
    out: set[tuple[str, str, str]] = set()
    direction = ""
    for line in sh("ip", "-n", ns, "xfrm", "policy").splitlines():
        w = line.split()
        if "dir" in w:
            direction = w[w.index("dir") + 1]
        elif w[:1] == ["tmpl"]:
            out.add((direction, w[w.index("src") + 1], w[w.index("dst") + 1]))
    return out


@contextmanager
def inside_namespace(ns: str, setup: Sequence[Sequence[str]], why: str) -> Iterator[None]:
    """Namespace `ns` with `lo` up and `setup` run in it (each an `ip -n ns` command line without that
    prefix), entered for the sockets, threads and netlink the test makes; deleted afterwards."""
    require("root", "iproute2", why=why)
    from pyroute2 import netns

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for argv in setup:
            sh("ip", "-n", ns, *argv)
        netns.pushns(ns)
        try:
            yield
        finally:
            netns.popns()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def veth(a: str, b: str) -> list[list[str]]:
    """A veth pair `a`/`b` inside the namespace, both ends up (an interface with routes, no peer host)."""
    return [["link", "add", a, "type", "veth", "peer", "name", b], ["link", "set", a, "up"], ["link", "set", b, "up"]]
