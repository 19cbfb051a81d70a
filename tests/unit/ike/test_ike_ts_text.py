"""core_ike/ike/ts.py: the display text of traffic selectors (RFC 7296 §3.13.1) and the parsed
configuration selectors, against ipaddress's own rendering."""

from __future__ import annotations

import ipaddress
import random

import pytest

from core_ike.codec.payloads import TrafficSelector
from core_ike.constants import TsType
from core_ike.errors import LocalError
from core_ike.ike import ts as tsmod


def reference(sel: TrafficSelector) -> str:
    """The text as ipaddress renders the range (summarize_address_range: one block or `a..b`)."""
    lo, hi = ipaddress.ip_address(sel.start_addr), ipaddress.ip_address(sel.end_addr)
    nets = list(ipaddress.summarize_address_range(lo, hi)) if int(lo) <= int(hi) else []
    base = str(nets[0]) if len(nets) == 1 else f"{lo}..{hi}"
    if sel.ip_proto or (sel.start_port, sel.end_port) != (0, 65535):
        proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(sel.ip_proto, str(sel.ip_proto))
        base += f"[{proto}" + ("" if (sel.start_port, sel.end_port) == (0, 65535) else f"/{sel.start_port}") + "]"
    return base


def v4(lo: int, hi: int, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    return TrafficSelector(TsType.IPV4_ADDR_RANGE, proto, ports[0], ports[1], lo.to_bytes(4, "big"),
                           hi.to_bytes(4, "big"))


def test_ipv4_text_matches_ipaddress_for_blocks_ranges_and_reversed_ranges() -> None:
    rng = random.Random(7)
    cases = [v4(0, 2**32 - 1), v4(0, 0), v4(2**32 - 1, 2**32 - 1), v4(5, 4), v4(10, 13), v4(8, 15),
             v4(0x0A000000, 0x0AFFFFFF, 6, (80, 80)), v4(1, 1, 17)]
    for _ in range(3000):
        prefix = rng.randrange(33)
        base = rng.getrandbits(32) & ~((1 << (32 - prefix)) - 1) & 0xFFFFFFFF
        cases.append(v4(base, base + (1 << (32 - prefix)) - 1))  # a block
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        cases.append(v4(a, b))  # any range, reversed ones too
        cases.append(v4(a, a + rng.randrange(1, 5) if a < 2**32 - 5 else a))
    for sel in cases:
        assert tsmod.to_text(sel) == reference(sel), sel


def test_ipv6_and_odd_lengths_keep_their_text() -> None:
    six = TrafficSelector(TsType.IPV6_ADDR_RANGE, 0, 0, 65535, bytes(15) + b"\x01", bytes(15) + b"\x01")
    assert tsmod.to_text(six) == "::1/128"
    assert tsmod.to_text(TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 65535, b"\x01\x02", b"\x01\x03")) == \
        "0102..0103"


def test_parse_gives_the_same_selector_each_time_and_errors_each_time() -> None:
    a = tsmod.parse("dynamic[tcp/443]", "192.0.2.7")
    assert a == tsmod.parse("dynamic[tcp/443]", "192.0.2.7") == tsmod.from_cidr("192.0.2.7/32", 6, (443, 443))
    assert tsmod.parse("dynamic", "192.0.2.8") != a
    for _ in range(2):  # a refused text is refused again, not remembered as something else
        with pytest.raises(LocalError):
            tsmod.parse("10.0.0.0/33", None)
        with pytest.raises(LocalError):
            tsmod.parse("dynamic", None)
