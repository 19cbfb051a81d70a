"""A kernel without IPv6 refuses the TUN device's IPv6 address generation mode (EAFNOSUPPORT, as with
ipv6.disable=1): core_ike.io.fastpath.quiet_tun_ipv6 logs it at debug and returns, so the data plane
still comes up. The netlink socket is a stand-in that refuses, as the kernel would; the setting itself
is checked against the real kernel in tests/dataplane/test_userspace_tun_ipv6.py."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest
from pyroute2 import NetlinkError  # type: ignore[import-untyped]

from core_ike.io.fastpath import quiet_tun_ipv6


class NoIpv6:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def link(self, command: str, **kw: Any) -> None:
        self.asked.append({"command": command, **kw})
        raise NetlinkError(errno.EAFNOSUPPORT, "Address family not supported by protocol")


def test_a_refusal_is_logged_at_debug_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ipr = NoIpv6()
    with caplog.at_level(logging.DEBUG, logger="core_ike.io.userspace"):
        quiet_tun_ipv6(ipr, 7, "ipsec0")
    [asked] = ipr.asked
    assert asked["command"] == "set" and asked["index"] == 7
    assert asked["IFLA_AF_SPEC"] == {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}
    [rec] = caplog.records
    assert rec.levelno == logging.DEBUG and "ipsec0" in rec.getMessage()
