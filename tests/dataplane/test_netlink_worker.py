"""`core_ike.io.netlink.NetlinkWorker` and `RouteSocket` against the real kernel, in a fresh network namespace.

The checks run in a child process inside the namespace (the worker opens its netlink sockets in the
namespace of the process) and print one JSON line of findings, which the test asserts on.
"""

from __future__ import annotations

import os

import pytest

from tests.dataplane.xfrmns import run_in_new_namespace

pytestmark = pytest.mark.netns

NS = f"nlw{os.getpid() % 100000}"

CHILD = r"""
import asyncio, ipaddress, json, subprocess, time
from pyroute2 import NetlinkError
from core_ike.io.netlink import NetlinkClosedError, NetlinkWorker, RouteSocket

async def main():
    out = {}
    loop = asyncio.get_running_loop()
    notified = asyncio.Event()

    class Worker(NetlinkWorker):
        def _on_events(self):  # the test waits for the notification itself, not for a poll
            super()._on_events()
            notified.set()

    w = Worker()
    w.watch_addresses(loop)
    lo = w.call(lambda ipr: ipr.link_lookup(ifname="lo")[0])
    w.call(lambda ipr: ipr.link("set", index=lo, state="up"))
    # FIFO: queued without waiting, the results come back in order
    futs = [w.submit(lambda ipr, i=i: i) for i in range(20)]
    out["fifo"] = [f.result(5) for f in futs]
    # the kernel's refusal reaches the caller (a route via a gateway on no reachable subnet)
    try:
        w.call(lambda ipr: ipr.route("add", dst="10.77.0.0/24", gateway="10.78.0.1"))
        out["refused"] = None
    except NetlinkError as e:
        out["refused"] = e.code
    # cached address list: two lookups, one dump
    first = [str(a) for a in w.call(w.addresses)]
    d0 = w.dumps
    w.call(w.addresses)
    out["cached"] = w.dumps == d0
    out["first"] = first
    # an address added behind the worker's back reaches the cache through the notification
    proc = await asyncio.create_subprocess_exec("ip", "addr", "add", "10.79.0.1/32", "dev", "lo")
    await proc.wait()
    deadline = time.monotonic() + 5
    seen = [str(a) for a in w.call(w.addresses)]
    while "10.79.0.1" not in seen and time.monotonic() < deadline:
        try:  # each notification read by this loop distrusts the cache; the next lookup dumps again
            await asyncio.wait_for(notified.wait(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            break
        notified.clear()
        seen = [str(a) for a in w.call(w.addresses)]
    out["after_add"] = seen
    # RouteSocket: added with the preferred source, replaced in place, refused for a missing device
    rs = RouteSocket()
    rs.replace("10.80.0.0/24", lo, "10.79.0.1")
    rs.replace("10.80.0.0/24", lo, "10.79.0.1")
    rs.replace("fd00:80::/64", lo)
    # the same as ipaddress objects (a data plane's selectors and addresses)
    rs.replace(ipaddress.ip_network("10.83.0.0/24"), lo, ipaddress.ip_address("10.79.0.1"))
    rs.replace(ipaddress.ip_network("fd00:83::/64"), lo)
    out["objects"] = subprocess.run(["ip", "route", "show", "10.83.0.0/24"], capture_output=True, text=True).stdout
    out["objects6"] = subprocess.run(["ip", "-6", "route", "show", "fd00:83::/64"], capture_output=True,
                                     text=True).stdout
    out["routes"] = subprocess.run(["ip", "route", "show", "10.80.0.0/24"], capture_output=True, text=True).stdout
    out["routes6"] = subprocess.run(["ip", "-6", "route", "show", "fd00:80::/64"], capture_output=True, text=True).stdout
    try:
        rs.replace("10.81.0.0/24", 9999)
        out["nodev"] = None
    except NetlinkError as e:
        out["nodev"] = e.code
    # in a table of its own, via a next hop; looked up (the table that answered), deleted, deleted again
    rs.replace("10.82.0.0/24", lo, "10.79.0.1", table=220)
    subprocess.run(["ip", "rule", "add", "priority", "220", "table", "220"], check=True)
    out["lookup"] = list(vars(rs.lookup("10.82.0.9")).values())
    out["lookup_main"] = list(vars(rs.lookup("10.80.0.9")).values())
    out["table220"] = subprocess.run(["ip", "route", "show", "table", "220"], capture_output=True, text=True).stdout
    rs.delete("10.82.0.0/24", 220)
    rs.delete("10.80.0.0/24")  # a scope-link route, deleted without naming its scope
    out["after_delete"] = subprocess.run(["ip", "route", "show", "table", "all", "10.80.0.0/24"], capture_output=True,
                                         text=True).stdout + subprocess.run(["ip", "route", "show", "table", "220"],
                                         capture_output=True, text=True).stdout
    try:
        rs.delete("10.82.0.0/24", 220)
        out["gone"] = None
    except NetlinkError as e:
        out["gone"] = e.code
    try:
        rs.lookup("203.0.113.1")
        out["unreachable"] = None
    except NetlinkError as e:
        out["unreachable"] = e.code
    rs.close()
    w.close()
    try:
        w.submit(lambda ipr: None)
        out["closed"] = False
    except NetlinkClosedError:
        out["closed"] = True
    print(json.dumps(out))

asyncio.run(main())
"""


def test_netlink_worker_in_namespace() -> None:
    out = run_in_new_namespace(NS, CHILD, why="a network namespace")
    assert out["fifo"] == list(range(20))
    assert out["refused"] is not None and out["refused"] != 0
    assert out["cached"] is True
    assert "10.79.0.1" not in out["first"]
    assert "10.79.0.1" in out["after_add"]
    assert out["closed"] is True
    assert out["routes"].split() == ["10.80.0.0/24", "dev", "lo", "proto", "static", "scope", "link", "src", "10.79.0.1"]
    assert out["routes6"].startswith("fd00:80::/64 dev lo")
    assert out["objects"].split() == ["10.83.0.0/24", "dev", "lo", "proto", "static", "scope", "link", "src",
                                      "10.79.0.1"]
    assert out["objects6"].startswith("fd00:83::/64 dev lo")
    assert out["nodev"] == 19  # ENODEV
    lo = out["lookup"][3]
    assert out["lookup"] == [220, 1, None, lo] and out["lookup_main"] == [254, 1, None, lo]
    assert out["table220"].split() == ["10.82.0.0/24", "dev", "lo", "proto", "static", "scope", "link", "src",
                                       "10.79.0.1"]
    assert out["after_delete"] == ""
    assert out["gone"] == 3  # ESRCH
    assert out["unreachable"] == 101  # ENETUNREACH
