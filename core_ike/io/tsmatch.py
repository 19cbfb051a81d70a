"""Traffic selector matching of the userspace data plane (RFC 4301 4.4.1, RFC 7296 2.9): the flow of
an IP packet and whether a policy's selectors cover it."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from .dataplane import PolicyParams

_PORT_PROTOS = (6, 17, 132)  # TCP, UDP, SCTP: ports at the start of the L4 header


def packet_flow(pkt: bytes) -> tuple[Any, Any, int, int, int] | None:
    """(src, dst, protocol, sport, dport) of an IPv4/IPv6 packet; None if unparsable."""
    try:
        if pkt[0] >> 4 == 4:
            ihl = (pkt[0] & 0x0F) * 4
            proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
            l4 = ihl
        elif pkt[0] >> 4 == 6:
            proto, src, dst = pkt[6], pkt[8:24], pkt[24:40]
            l4 = 40  # extension headers are not walked: such flows match "any port" only
        else:
            return None
        sport = dport = 0
        if proto in _PORT_PROTOS and len(pkt) >= l4 + 4:
            sport, dport = struct.unpack_from(">HH", pkt, l4)
        return ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport
    except (IndexError, ValueError):
        return None


def ts_match(p: PolicyParams, src: Any, dst: Any, proto: int, sport: int, dport: int, out: bool) -> bool:
    local, remote = (p.local, p.remote)
    lo_addr, re_addr, lo_port, re_port = (src, dst, sport, dport) if out else (dst, src, dport, sport)
    if lo_addr not in local.subnet or re_addr not in remote.subnet:
        return False
    for ts, port in ((local, lo_port), (remote, re_port)):
        if ts.protocol and ts.protocol != proto:
            return False
        if not ts.any_port and not ts.port_start <= port <= ts.port_end:
            return False
    return True
