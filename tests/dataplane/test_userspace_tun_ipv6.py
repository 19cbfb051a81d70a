"""The userspace data plane's TUN device sends no IPv6 of the kernel's own (router solicitations, MLD
reports: they would match no policy and count as drop_no_policy) yet carries the IPv6 that routes send
into it. Against the real kernel in a fresh network namespace; the checks run in a child process inside
it (the data plane opens its TUN device and netlink sockets there) and print one JSON line of findings."""

from __future__ import annotations

import os
import socket

import pytest

from tests.dataplane.xfrmns import run_in_new_namespace

pytestmark = pytest.mark.netns

NS = f"utv6{os.getpid() % 100000}"

CHILD = r"""
import asyncio, json, os, select, socket, subprocess
from core_ike.io.userspace import UserspaceDataPlane

def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout.strip()

async def main():
    ip("link", "set", "lo", "up")
    ip("addr", "add", "fd00::1/128", "dev", "lo")  # a source address from elsewhere than the TUN device
    dp = UserspaceDataPlane(lambda d, a: None, tun_name="ipsec9", offload=frozenset())
    dp.start(asyncio.get_running_loop())
    out = {"addrs": ip("-6", "addr", "show", "dev", "ipsec9"), "up": "UP" in ip("link", "show", "dev", "ipsec9")}
    with open("/proc/sys/net/ipv6/conf/ipsec9/addr_gen_mode") as f:
        out["addr_gen_mode"] = f.read().strip()
    ip("-6", "route", "add", "fd01::/64", "dev", "ipsec9")
    # the data plane's TUN fd, read here before the event loop gets to it
    tun = next(int(n) for n in os.listdir("/proc/self/fd")
               if os.readlink(f"/proc/self/fd/{n}") == "/dev/net/tun")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendto(b"inner", ("fd01::5", 9))
    # queued at once by the send; the first packet read is the first the kernel put into the device
    assert select.select([tun], [], [], 5)[0], "nothing to read from the TUN device"
    p = os.read(tun, 2000)
    out["first"] = [p[0] >> 4, socket.inet_ntop(socket.AF_INET6, p[8:24]), socket.inet_ntop(socket.AF_INET6, p[24:40]),
                    p[6], p[-5:].decode(errors="replace")]
    out["drop_no_policy"] = dp.stats()["drop_no_policy"]
    dp.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_tun_device_has_no_link_local_address_and_carries_routed_ipv6() -> None:
    out = run_in_new_namespace(NS, CHILD, why="a network namespace and a TUN device")
    assert out["up"]
    assert out["addr_gen_mode"] == "1"  # IN6_ADDR_GEN_MODE_NONE
    # no fe80:: address: nothing for the kernel to solicit routers (RFC 4861 6.3.7) or report MLD from
    assert out["addrs"] == ""
    # the routed datagram, not a router solicitation (fe80:: -> ff02::2, ICMPv6 133) ahead of it
    assert out["first"] == [6, "fd00::1", "fd01::5", socket.IPPROTO_UDP, "inner"]
    assert out["drop_no_policy"] == 0
