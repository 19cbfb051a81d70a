"""XFRM backend: what this kernel allows (policies, ACQUIRE, SPI allocation) in a test namespace.

SA installation needs INET_ESP; where the kernel lacks it the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from core_ike.constants import EncrId, IntegId
from core_ike.io.dataplane import (
    Acquire,
    DataPlane,
    DataPlaneError,
    Direction,
    PolicyAction,
    PolicyParams,
    SaParams,
    TrafficSelector,
)
from core_ike.io.xfrm import XfrmDataPlane, choose_backend, kernel_supports_esp
from tests.guards import require

pytestmark = pytest.mark.netns

NS = f"esp{os.getpid() % 100000}_x"
NO_ESP = "kernel lacks INET_ESP: XFRM_MSG_NEWSA returns EPROTONOSUPPORT"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def xfrm() -> Iterator[XfrmDataPlane]:
    require("root", "iproute2", why="XFRM state in a network namespace")
    from pyroute2 import netns

    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        # a veth pair inside the namespace gives 10.10.2.0/24 a route (for ACQUIRE)
        sh("ip", "-n", NS, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
        sh("ip", "-n", NS, "addr", "add", "10.10.1.1/24", "dev", "x0")
        sh("ip", "-n", NS, "link", "set", "x0", "up")
        sh("ip", "-n", NS, "link", "set", "x1", "up")
        sh("ip", "-n", NS, "route", "add", "10.10.2.0/24", "via", "10.10.1.2")
        netns.pushns(NS)  # sockets created from here on live in the test namespace
        try:
            dp = XfrmDataPlane()
            yield dp
            dp.close()
        finally:
            netns.popns()
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def _policies(action: PolicyAction = PolicyAction.TRAP) -> list[PolicyParams]:
    local, remote = TrafficSelector.parse("10.10.1.0/24"), TrafficSelector.parse("10.10.2.0/24")
    return [
        PolicyParams(local, remote, d, reqid=7, tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2", action=action)
        for d in (Direction.OUT, Direction.IN, Direction.FWD)
    ]


def test_backend_is_a_dataplane(xfrm: XfrmDataPlane) -> None:
    assert isinstance(xfrm, DataPlane)


def test_allocate_spi_and_delete(xfrm: XfrmDataPlane) -> None:
    spi = xfrm.allocate_spi("192.0.2.2", "192.0.2.1", reqid=5)
    assert 0x100 <= spi <= 0xFFFFFFFF
    rows = xfrm.dump_sas()
    assert any(r["spi"] == spi and r["reqid"] == 5 and r["dst"] == "192.0.2.1" for r in rows), rows
    assert f"spi 0x{spi:08x}" in sh("ip", "-n", NS, "xfrm", "state")
    xfrm.delete_sa(spi, Direction.IN, dst="192.0.2.1")
    assert not any(r["spi"] == spi for r in xfrm.dump_sas())


def test_policies_install_and_delete(xfrm: XfrmDataPlane) -> None:
    for p in _policies():
        xfrm.install_policy(p)
        xfrm.install_policy(p)  # idempotent (UPDPOLICY)
    out = sh("ip", "-n", NS, "xfrm", "policy")
    assert "src 10.10.1.0/24 dst 10.10.2.0/24" in out and "dir out" in out
    assert "src 10.10.2.0/24 dst 10.10.1.0/24" in out and "dir in" in out and "dir fwd" in out
    assert "tmpl src 192.0.2.1 dst 192.0.2.2" in out and "reqid 7 mode tunnel" in out
    for p in _policies():
        xfrm.delete_policy(p)
    assert sh("ip", "-n", NS, "xfrm", "policy").strip() == ""


def test_trap_policy_raises_acquire(xfrm: XfrmDataPlane) -> None:
    for p in _policies():
        xfrm.install_policy(p)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # inside the namespace (pushns)
    s.bind(("10.10.1.1", 0))
    sport = s.getsockname()[1]
    with contextlib.suppress(OSError):  # no SA yet: the kernel may refuse the packet after queueing the acquire
        s.sendto(b"trigger", ("10.10.2.1", 9))
    s.close()
    import select

    select.select([xfrm], [], [], 3.0)
    ev = xfrm.next_event()
    assert ev == Acquire(7, "10.10.1.1", "10.10.2.1", 17, "192.0.2.1", "192.0.2.2", sport, 9), ev


def test_install_sa(xfrm: XfrmDataPlane) -> None:
    p = SaParams(
        spi=0x1234,
        direction=Direction.OUT,
        src="192.0.2.1",
        dst="192.0.2.2",
        encr_id=EncrId.AES_CBC,
        encr_key_bits=128,
        encr_key=bytes(16),
        integ_id=IntegId.HMAC_SHA2_256_128,
        integ_key=bytes(32),
        encap=True,
        reqid=7,
    )
    if not kernel_supports_esp():
        # the message passes the kernel's validation and fails only at the missing ESP type
        with pytest.raises(DataPlaneError) as ei:
            xfrm.install_sa(p)
        assert ei.value.errno == errno.EPROTONOSUPPORT
        pytest.skip(NO_ESP)
    xfrm.install_sa(p)
    assert xfrm.query_usage(0x1234, Direction.OUT).packets == 0
    xfrm.delete_sa(0x1234, Direction.OUT)


def test_detection_and_choice() -> None:
    require("root", why="XFRM netlink")
    supported = kernel_supports_esp()
    backend = choose_backend("auto")
    try:
        assert backend.name == ("xfrm" if supported else "userspace")
    finally:
        backend.close()
    if not supported:
        with pytest.raises(Exception, match="lacks ESP"):
            choose_backend("xfrm")


def test_virtual_ip_goes_on_lo_and_comes_off(xfrm: XfrmDataPlane) -> None:
    """A virtual IP we are assigned (RFC 7296 §2.19) becomes a local address on lo, IPv4 and IPv6, and
    `del_vip` removes it; one the host has already is reported as such (not ours to remove)."""
    def on_lo() -> str:
        return sh("ip", "-n", NS, "-o", "addr", "show", "dev", "lo")

    assert xfrm.add_vip("10.3.0.7") is True and xfrm.add_vip("fd00:3::7") is True
    assert " 10.3.0.7/32 " in on_lo() and " fd00:3::7/128 " in on_lo()
    assert xfrm.add_vip("10.3.0.7") is False and xfrm.add_vip("10.10.1.1") is False  # x0 has that one
    xfrm.del_vip("10.3.0.7")
    xfrm.del_vip("fd00:3::7")
    xfrm.del_vip("10.3.0.7")  # gone already: no error
    assert "10.3.0.7" not in on_lo() and "fd00:3::7" not in on_lo()
