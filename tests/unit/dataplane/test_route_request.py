"""`RouteSocket.replace`'s rtnetlink request, octet for octet (rtnetlink(7): nlmsghdr, rtmsg, then the RTA_DST,
RTA_OIF, RTA_GATEWAY, RTA_PREFSRC and RTA_TABLE attributes), whatever parts of it are kept between routes, and
the kernel's answer: an acknowledgement returns, a refusal raises NetlinkError with its errno."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from pyroute2 import NetlinkError  # type: ignore[import-untyped]

from core_ike.io import netlink as nl


def reference(seq: int, dst: str, oif: int, prefsrc: str | None, table: int, gateway: str | None,
              scope: int | None) -> bytes:
    """The request as `ip route replace` asks it, packed field by field."""
    net = ipaddress.ip_network(dst, strict=False)

    def rta(t: int, payload: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(payload), t) + payload + bytes(-(4 + len(payload)) % 4)

    attrs = rta(1, net.network_address.packed) + rta(4, struct.pack("=I", oif))
    if gateway:
        attrs += rta(5, ipaddress.ip_address(gateway).packed)
    if prefsrc:
        attrs += rta(7, ipaddress.ip_address(prefsrc).packed)
    attrs += rta(15, struct.pack("=I", table))
    if scope is None:
        scope = 0 if gateway else 253
    rtm = struct.pack("=BBBBBBBBI", socket.AF_INET if net.version == 4 else socket.AF_INET6, net.prefixlen, 0, 0,
                      table if table < 256 else 252, 4, scope, 1, 0)
    body = rtm + attrs
    return struct.pack("=IHHII", 16 + len(body), 24, 0x1 | 0x4 | 0x100 | 0x400, seq, 0) + body


class FakeKernelSocket:
    """The rtnetlink socket: keeps what is sent, answers each request with an NLMSG_ERROR carrying `code`
    (0: the acknowledgement) and the request's sequence number."""

    def __init__(self, code: int = 0) -> None:
        self.sent: list[bytes] = []
        self.code = code

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def recv(self, _n: int) -> bytes:
        seq = struct.unpack_from("=I", self.sent[-1], 8)[0]
        body = struct.pack("=i", self.code) + self.sent[-1][:16]
        return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body

    def close(self) -> None:
        pass


def route_socket(code: int = 0) -> tuple[nl.RouteSocket, FakeKernelSocket]:
    rs = nl.RouteSocket()
    rs._sock.close()
    fake = FakeKernelSocket(code)
    rs._sock = fake  # type: ignore[assignment]
    return rs, fake


CASES = [
    ("10.201.0.1/32", 7, "10.200.0.1", 254, None, None),
    ("10.201.0.2/32", 7, "10.200.0.1", 254, None, None),  # same device and source: the kept parts again
    ("10.201.0.0/16", 7, None, 254, None, None),
    ("10.201.3.4/32", 9, "10.200.0.1", 254, None, None),  # another device
    ("192.0.2.0/24", 3, "10.200.0.1", 220, "198.51.100.1", 0),
    ("192.0.2.0/24", 3, "10.200.0.2", 220, "198.51.100.1", 0),  # another source
    ("198.51.100.0/24", 3, None, 1000, "198.51.100.1", None),  # a table above 255: RT_TABLE_COMPAT + RTA_TABLE
    ("2001:db8:1::/48", 4, "2001:db8::1", 220, "fe80::1", 0),
    ("2001:db8:2::1/128", 4, "2001:db8::1", 254, None, None),
]


def test_each_request_is_the_reference_encoding_in_any_order() -> None:
    rs, fake = route_socket()
    for order in (CASES, list(reversed(CASES)), CASES):
        for dst, oif, src, table, gw, scope in order:
            rs.replace(dst, oif, src, table=table, gateway=gw, scope=scope)
            seq = struct.unpack_from("=I", fake.sent[-1], 8)[0]
            assert fake.sent[-1] == reference(seq, dst, oif, src, table, gw, scope), (dst, src, gw)
    seqs = [struct.unpack_from("=I", m, 8)[0] for m in fake.sent]
    assert seqs == list(range(1, len(seqs) + 1))  # each request numbered anew


def test_addresses_as_objects_encode_as_their_text() -> None:
    rs, fake = route_socket()
    rs.replace(ipaddress.ip_network("10.201.0.9/32"), 7, ipaddress.ip_address("10.200.0.1"))
    by_objects = fake.sent[-1]
    rs.replace("10.201.0.9/32", 7, "10.200.0.1")
    assert by_objects[16:] == fake.sent[-1][16:]  # only the sequence number differs
    assert by_objects == reference(1, "10.201.0.9/32", 7, "10.200.0.1", 254, None, None)


def test_a_refused_route_raises_with_the_kernels_errno() -> None:
    rs, _ = route_socket(-errno.ENODEV)
    with pytest.raises(NetlinkError) as info:
        rs.replace("10.201.0.1/32", 7, "10.200.0.1")
    assert info.value.code == errno.ENODEV


def test_many_devices_and_sources_keep_encoding_right() -> None:
    rs, fake = route_socket()
    for i in range(600):  # more combinations than the kept parts hold
        src = f"10.200.{i // 250}.{i % 250 + 1}"
        rs.replace("10.201.0.1/32", 1 + i % 7, src)
        assert fake.sent[-1] == reference(i + 1, "10.201.0.1/32", 1 + i % 7, src, 254, None, None)
    assert len(rs._replace_parts) <= 256


def test_the_destination_in_parts_encodes_as_the_network() -> None:
    """`replace_prefix` (what the userspace data plane asks with a selector's version, prefix length and
    network) sends the request `replace` sends for that network."""
    rs, fake = route_socket()
    for dst, oif, src, table, gw, scope in CASES:
        net = ipaddress.ip_network(dst)
        rs.replace_prefix(net.version, net.prefixlen, net.network_address.packed, oif, src, table=table, gateway=gw,
                          scope=scope)
        seq = struct.unpack_from("=I", fake.sent[-1], 8)[0]
        assert fake.sent[-1] == reference(seq, dst, oif, src, table, gw, scope), dst
