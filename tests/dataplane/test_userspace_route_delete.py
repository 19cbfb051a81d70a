"""The userspace data plane's route into its TUN device goes with the last CHILD_SA using it, against the
real kernel in a fresh network namespace, and a road warrior's next CHILD_SA for the same virtual IP
keeps its own route. The checks run in a child process inside the namespace (the data plane opens its
TUN device and netlink sockets there) and print one JSON line of findings."""

from __future__ import annotations

import os

import pytest

from tests.dataplane.xfrmns import run_in_new_namespace

pytestmark = pytest.mark.netns

NS = f"urd{os.getpid() % 100000}"

CHILD = r"""
import asyncio, json, subprocess
from core_ike.daemon.glue import DataPlaneGlue
from core_ike.ike import events as ev
from core_ike.io.userspace import UserspaceDataPlane

def child(uid):
    keys = ev.ChildKeys(20, 128, 0, False, 0x1000 + 2 * uid, 0x2000 + 2 * uid, bytes(20), b"", bytes(20), b"")
    return ev.ChildSaEstablished("rw", uid, "rw", uid, 100 + uid, ("192.0.2.1", 4500), ("192.0.2.150", 4500),
                                 True, ("10.1.0.0/16",), ("10.3.0.3/32",), keys, "AES_GCM_16_128")

def routes():
    return subprocess.run(["ip", "route", "show", "dev", "ipsec9"], capture_output=True, text=True).stdout.strip()

async def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.1.0.1/32", "dev", "lo"], check=True)
    dp = UserspaceDataPlane(lambda d, a: None, tun_name="ipsec9")
    dp.start(asyncio.get_running_loop())
    glue = DataPlaneGlue(dp)
    out = {}
    glue.handle(child(1))
    out["up"] = routes()
    glue.handle(ev.ChildSaDeleted("rw", "rw", 1, 0x1002, 0x2002, "deleted by peer"))
    out["gone"] = routes()
    glue.handle(child(2))  # she comes back with the same virtual IP
    glue.handle(child(3))  # and again before the second one goes (INITIAL_CONTACT deletes it after)
    glue.handle(ev.ChildSaDeleted("rw", "rw", 2, 0x1004, 0x2004, "deleted by peer"))
    out["kept"] = routes()
    dp.close()  # anything left to the netlink worker has run
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_route_goes_with_its_last_child_sa_and_a_new_one_keeps_its_own() -> None:
    out = run_in_new_namespace(NS, CHILD, why="a network namespace and a TUN device")
    assert out["up"].split()[:1] == ["10.3.0.3"]
    assert out["gone"] == ""  # the departed road warrior's route is not left behind
    assert out["kept"].split()[:1] == ["10.3.0.3"]  # the old CHILD_SA's going leaves the new one's route
