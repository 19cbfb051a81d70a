"""Traffic selectors (RFC 7296 2.9, 3.13): parsing config text, narrowing, printing."""

from __future__ import annotations

import functools
import ipaddress

from ..codec.payloads import TrafficSelector
from ..constants import TsType
from ..errors import LocalError

_MAX4 = b"\xff" * 4
_MAX16 = b"\xff" * 16


def from_cidr(text: str, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise LocalError(f"bad traffic selector {text!r}") from e
    t = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    return TrafficSelector(t, proto, ports[0], ports[1], net.network_address.packed, net.broadcast_address.packed)


@functools.lru_cache(maxsize=4096)
def parse(text: str, dynamic: str | None) -> TrafficSelector:
    """`10.1.0.0/24`, `10.1.0.2`, `dynamic` (our/peer's address), optional `[proto/port]` suffix.

    Cached: a configuration's selectors are parsed for every CHILD_SA it negotiates, with the same
    addresses for `dynamic` (a selector is immutable)."""
    proto, ports = 0, (0, 65535)
    if "[" in text and text.endswith("]"):
        text, spec = text[:-1].split("[", 1)
        p, _, port = spec.partition("/")
        proto = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "": 0}.get(p, int(p) if p.isdigit() else -1)
        if proto < 0:
            raise LocalError(f"bad protocol in traffic selector: {p!r}")
        if port and port != "%any":
            ports = (int(port), int(port))
    if text == "dynamic":
        if dynamic is None:
            raise LocalError("dynamic traffic selector without an address")
        text = dynamic
    return from_cidr(text, proto, ports)


def is_dynamic(text: str) -> bool:
    """`dynamic` or `dynamic[proto/port]` in a config."""
    return text.split("[", 1)[0] == "dynamic"


def is_host(ts: TrafficSelector) -> bool:
    """One address (a /32 or /128), any protocol and ports."""
    return ts.start_addr == ts.end_addr


def full(version: int = 4) -> TrafficSelector:
    return from_cidr("0.0.0.0/0" if version == 4 else "::/0")


def within(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    """Does `outer` hold all of `inner` (RFC 7296 2.9): intersect(inner, outer) == inner, without making
    the intersection."""
    return (inner.ts_type == outer.ts_type and outer.ip_proto in (0, inner.ip_proto)
            and outer.start_port <= inner.start_port <= inner.end_port <= outer.end_port
            and outer.start_addr <= inner.start_addr <= inner.end_addr <= outer.end_addr)


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """RFC 7296 2.9: the responder narrows to the intersection of both selectors."""
    if within(a, b):
        return a  # the common case (an initiator's host inside a configured range): nothing new to make
    if a.ts_type != b.ts_type:
        return None
    if a.ip_proto and b.ip_proto and a.ip_proto != b.ip_proto:
        return None
    proto = a.ip_proto or b.ip_proto
    sp, ep = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if sp > ep:
        return None
    sa, ea = max(a.start_addr, b.start_addr), min(a.end_addr, b.end_addr)
    if sa > ea:
        return None
    return TrafficSelector(a.ts_type, proto, sp, ep, sa, ea)


def narrow(offered: list[TrafficSelector], configured: list[TrafficSelector]) -> list[TrafficSelector]:
    """The intersections of each offered selector with each configured one, without those another of
    them holds: an initiator's first selectors may be a triggering packet's, inside its ranges (RFC
    7296 2.9), and a policy for them next to the range's would be redundant."""
    if len(offered) == 1 and len(configured) == 1:  # the common case: one selector a side, no list to prune
        o, c = offered[0], configured[0]
        if (o.ts_type == c.ts_type and c.ip_proto in (0, o.ip_proto)  # within(o, c): o is the intersection
                and c.start_port <= o.start_port <= o.end_port <= c.end_port
                and c.start_addr <= o.start_addr <= o.end_addr <= c.end_addr):
            return [o]
        x = intersect(o, c)
        return [] if x is None else [x]
    out: list[TrafficSelector] = []
    for c in configured:
        for o in offered:
            x = intersect(o, c)
            if x is not None and x not in out:
                out.append(x)
    if len(out) < 2:
        return out
    return [x for x in out if not any(y != x and within(x, y) for y in out)]


_TEXTS: dict[tuple[bytes, bytes, int, int, int], str] = {}
_TEXTS_MAX = 4096


def to_text(ts: TrafficSelector) -> str:
    """strongSwan display: `10.1.0.0/24`, `10.1.0.2/32`, or a range `a..b`, plus `[proto/port]`.

    Kept by the fields the text depends on (the local selectors repeat for every CHILD_SA of a
    configuration); a tuple of them hashes and compares without the dataclass's own methods. An IPv4
    host with any protocol and port, a peer's own address and so one text per peer, is written at once."""
    a = ts.start_addr
    if len(a) == 4 and a == ts.end_addr and not ts.ip_proto and not ts.start_port and ts.end_port == 65535:
        return f"{a[0]}.{a[1]}.{a[2]}.{a[3]}/32"
    key = (ts.start_addr, ts.end_addr, ts.ip_proto, ts.start_port, ts.end_port)
    text = _TEXTS.get(key)
    if text is None:
        if len(_TEXTS) >= _TEXTS_MAX:
            _TEXTS.clear()
        text = _TEXTS[key] = _text(ts)
    return text


def _text(ts: TrafficSelector) -> str:
    lo_b, hi_b = ts.start_addr, ts.end_addr
    if len(lo_b) == 4 and len(hi_b) == 4:
        base = _v4_text(lo_b, hi_b)
    else:
        try:
            lo = ipaddress.ip_address(lo_b)
            hi = ipaddress.ip_address(hi_b)
        except ValueError:
            return f"{lo_b.hex()}..{hi_b.hex()}"
        ok = lo.version == hi.version and int(lo) <= int(hi)
        nets = list(ipaddress.summarize_address_range(lo, hi)) if ok else []
        base = str(nets[0]) if len(nets) == 1 else f"{lo}..{hi}"
    if ts.ip_proto or (ts.start_port, ts.end_port) != (0, 65535):
        proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(ts.ip_proto, str(ts.ip_proto))
        port = "" if (ts.start_port, ts.end_port) == (0, 65535) else f"/{ts.start_port}"
        base += f"[{proto}{port}]"
    return base


def _v4_text(lo_b: bytes, hi_b: bytes) -> str:
    """An IPv4 range as `a.b.c.d/n` when it is one CIDR block, else `a..b` (what ipaddress's
    summarize_address_range gives, without building address objects)."""
    lo, hi = int.from_bytes(lo_b, "big"), int.from_bytes(hi_b, "big")
    size = hi - lo + 1
    if size > 0 and not size & (size - 1) and not lo & (size - 1):  # a power of two, aligned
        return f"{_v4(lo_b)}/{33 - size.bit_length()}"
    return f"{_v4(lo_b)}..{_v4(hi_b)}"


def _v4(b: bytes) -> str:
    """Dotted-quad text of 4 octets (RFC 791), without the OS's inet_ntop (this package does no OS calls)."""
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def list_text(tss: list[TrafficSelector]) -> str:
    return " ".join(to_text(t) for t in tss)
