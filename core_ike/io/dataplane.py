"""Pluggable data-plane interface: what the IKE daemon asks of an IPsec backend.

The IKE engine turns CHILD_SA events into calls here (install / update / delete SA, install /
delete policy) and drains `DataPlaneEvent`s (lifetime expiry, acquire) back. Two backends implement
it: `core_ike.io.userspace.UserspaceDataPlane` (ESP over TUN in Python, the default on hosts whose
kernel lacks ESP) and `core_ike.io.xfrm.XfrmDataPlane` (kernel SAs through NETLINK_XFRM).

Make-before-break rekey (RFC 7296 2.8): install the new inbound SA, then the new outbound SA with
`install_sa`, then delete the old SAs; both inbound SAs are accepted meanwhile. A backend sends on the
newest outbound SA installed for a reqid (falling back to an older one when the newest is deleted), so
the time of `install_sa` of an outbound SA is when the CHILD_SA starts sending on it: at once for the
rekey initiator, at the end of the old CHILD_SA for the rekey responder (the daemon's glue installs it
at the engine's ChildSaOutbound; docs/architecture.md, "CHILD_SA rekeying").
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

from ..constants import EncrId, IntegId
from ..errors import LocalError
from ..esp.algorithms import USERSPACE, EspTransforms

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Direction(IntEnum):
    """Values match XFRM_POLICY_IN / OUT / FWD."""

    IN = 0
    OUT = 1
    FWD = 2


class PolicyAction(IntEnum):
    PROTECT = 0  # traffic goes through the SA with the policy's reqid
    TRAP = 1  # like PROTECT but no SA yet: matching traffic raises an Acquire
    BYPASS = 2
    DROP = 3


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Limits; 0 = unlimited. Seconds count from installation (RFC 7296 2.8 rekey timers)."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0
    soft_seconds: float = 0.0
    hard_seconds: float = 0.0


_NO_LIMITS = Lifetime()


@dataclass(slots=True, unsafe_hash=True)
class SaParams:
    """One ESP SA, one direction (tunnel mode).

    `src`/`dst` are the outer addresses (for an inbound SA: src = peer, dst = us); the ports are
    only used with `encap` (ESP-in-UDP, RFC 3948). Keys follow RFC 7296 2.17 KEYMAT: for AES-GCM
    `encr_key` ends with the 4-octet salt, for CBC `integ_key` is the separate integrity key.

    A value: never changed once made (an SA that moves is a new one, `dataclasses.replace`), compared
    and hashed by its fields. Not `frozen`: a frozen dataclass's __init__ sets each of its 17 fields
    through object.__setattr__, a call each, and two are made for every CHILD_SA installed.
    """

    spi: int
    direction: Direction
    src: str
    dst: str
    encr_id: EncrId
    encr_key_bits: int
    encr_key: bytes
    integ_id: IntegId = IntegId.NONE
    integ_key: bytes = b""
    src_port: int = 4500
    dst_port: int = 4500
    encap: bool = False
    reqid: int = 0
    lifetime: Lifetime = _NO_LIMITS  # a Lifetime is immutable: one default for all
    replay_window: int = 128
    esn: bool = False
    nat_keepalive: bool | None = None  # None: send keepalives when `encap` (RFC 3948 2.3)

    def __repr__(self) -> str:  # never log keys
        return (
            f"SaParams(spi={self.spi:08x}, {self.direction.name}, {self.src}:{self.src_port} -> "
            f"{self.dst}:{self.dst_port}, encap={self.encap}, {self.encr_id.name}-{self.encr_key_bits}"
            f"/{self.integ_id.name}, reqid={self.reqid})"
        )


def network(text: str) -> IPNetwork:
    """`ipaddress.ip_network(text, strict=False)`: an IPv4 address with a decimal prefix length (a CHILD_SA's
    selector as the engine reports it) read by the C parser, the rest by ipaddress. inet_pton takes the
    dotted quads ipaddress takes (four decimal octets, no leading zeros); anything it refuses goes to
    ipaddress, which parses it or gives its error."""
    v4 = _v4_prefix(text)
    if v4 is not None:
        return ipaddress.IPv4Network(v4[::-1], strict=False)
    return ipaddress.ip_network(text, strict=False)


def _v4_prefix(text: str) -> tuple[int, int] | None:
    """(prefix length, network as an integer) of `a.b.c.d[/n]` as ipaddress reads it (host bits cleared,
    strict=False); None for anything else."""
    addr, slash, plen = text.partition("/")
    if not slash:
        plen = "32"
    if plen.isascii() and plen.isdigit() and (n := int(plen)) <= 32:
        try:
            packed = socket.inet_pton(socket.AF_INET, addr)
        except (OSError, ValueError):
            return None
        return n, int.from_bytes(packed, "big") & _V4_MASKS[n]
    return None


_V4_MASKS = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))


class TrafficSelector:
    """An address range as a subnet, plus IP protocol (0 = any) and port range (RFC 7296 3.13.1).

    A value, never changed once made. The range is kept as `net`, (IP version, prefix length, network
    as an integer): what the policy table indexes, routes are requested with, equality and the hash are
    taken from. `subnet`, the ipaddress network, is made when first asked for: a CHILD_SA's selectors
    are installed (policies, route) without one, and building it costs more than the rest of a
    selector (a peer's selectors are new at every CHILD_SA)."""

    __slots__ = ("_hash", "_subnet", "net", "port_end", "port_start", "protocol")
    _subnet: IPNetwork | None
    net: tuple[int, int, int]
    protocol: int
    port_start: int
    port_end: int
    _hash: int

    def __init__(self, subnet: IPNetwork, protocol: int = 0, port_start: int = 0, port_end: int = 65535) -> None:
        self._subnet = subnet
        self.net = (subnet.version, subnet.prefixlen, int(subnet.network_address))
        self.protocol = protocol
        self.port_start = port_start
        self.port_end = port_end
        self._hash = hash((self.net, protocol, port_start, port_end))

    @classmethod
    def of(cls, version: int, prefixlen: int, address: int, protocol: int = 0, port_start: int = 0,
           port_end: int = 65535) -> TrafficSelector:
        """The selector of the network `address`/`prefixlen` (its host bits clear), without making the
        ipaddress network (`subnet` makes it when asked)."""
        ts = cls.__new__(cls)
        ts._subnet = None
        ts.net = net = (version, prefixlen, address)
        ts.protocol = protocol
        ts.port_start = port_start
        ts.port_end = port_end
        ts._hash = hash((net, protocol, port_start, port_end))
        return ts

    @property
    def subnet(self) -> IPNetwork:
        s = self._subnet
        if s is None:
            version, prefixlen, address = self.net
            s = ipaddress.IPv4Network((address, prefixlen)) if version == 4 else ipaddress.IPv6Network((address, prefixlen))
            self._subnet = s
        return s

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrafficSelector):
            return NotImplemented
        return (self.net == other.net and self.protocol == other.protocol and self.port_start == other.port_start
                and self.port_end == other.port_end)

    def __repr__(self) -> str:
        return (f"TrafficSelector(subnet={self.subnet!r}, protocol={self.protocol!r}, "
                f"port_start={self.port_start!r}, port_end={self.port_end!r})")

    @classmethod
    def parse(cls, text: str, protocol: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
        v4 = _v4_prefix(text)
        if v4 is not None:
            return cls.of(4, v4[0], v4[1], protocol, ports[0], ports[1])
        return cls(ipaddress.ip_network(text, strict=False), protocol, ports[0], ports[1])

    @property
    def any_port(self) -> bool:
        return self.port_start == 0 and self.port_end == 65535


@dataclass(slots=True)
class PolicyParams:
    """Policy for traffic local -> remote (OUT) or remote -> local (IN/FWD), bound to SAs by reqid.

    `tunnel_src`/`tunnel_dst` are the outer addresses of the template (needed by XFRM and for
    acquires); the userspace backend routes the remote selector into its TUN device.

    A value, never changed once made (a moved policy is a new one, `dataclasses.replace`; its hash is
    kept): not `frozen`, whose __init__ sets every field through object.__setattr__, a call each (two
    or three are made for a CHILD_SA's new reqid).
    """

    local: TrafficSelector
    remote: TrafficSelector
    direction: Direction
    reqid: int
    tunnel_src: str = ""
    tunnel_dst: str = ""
    action: PolicyAction = PolicyAction.PROTECT
    priority: int = 0  # 0: backend default (more specific first)
    _hash: int = field(default=0, init=False, repr=False, compare=False)  # hashed once (PolicyTable's keys)

    def __post_init__(self) -> None:
        # the selectors' hashes as kept (equal selectors have equal ones), not through their __hash__
        self._hash = hash((self.local._hash, self.remote._hash, self.direction, self.reqid, self.tunnel_src,
                           self.tunnel_dst, self.action, self.priority))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class SaUsage:
    bytes: int
    packets: int
    last_use: float  # backend clock (monotonic seconds); 0.0 = never used


# -- events out (design principle 9) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SaExpired:
    """A lifetime limit was reached: soft -> rekey, hard -> the SA is gone (RFC 7296 2.8)."""

    spi: int
    direction: Direction
    reqid: int
    hard: bool
    reason: str  # "bytes" | "packets" | "time" | "sequence"


@dataclass(frozen=True, slots=True)
class Acquire:
    """Traffic matched a TRAP policy without SA: the IKE engine should negotiate one."""

    reqid: int
    src: str  # packet source / destination that triggered it
    dst: str
    protocol: int
    tunnel_src: str = ""
    tunnel_dst: str = ""
    sport: int = 0  # the packet's ports (TCP, UDP, SCTP; 0: none or not known)
    dport: int = 0


DataPlaneEvent = SaExpired | Acquire
EventSink = Callable[[DataPlaneEvent], None]
SendDatagram = Callable[[bytes, tuple[str, int]], None]
"""`send(data, (host, port))` on the IKE transport's UDP 4500 socket, no non-ESP marker added."""


@runtime_checkable
class DataPlane(Protocol):
    """What a data-plane backend offers to the IKE daemon."""

    name: str
    esp_transforms: EspTransforms
    """What `install_sa` can install: the daemon offers and accepts only these in CHILD_SA proposals."""

    def allocate_spi(self, src: str, dst: str, reqid: int = 0) -> int:
        """A fresh inbound SPI (src = peer, dst = us), unique on this host."""
        ...

    def install_sa(self, params: SaParams) -> None: ...

    def update_sa(
        self,
        spi: int,
        direction: Direction,
        *,
        src: str | None = None,
        dst: str | None = None,
        src_port: int | None = None,
        dst_port: int | None = None,
        encap: bool | None = None,
    ) -> None:
        """Change outer addresses/ports or UDP encapsulation (NAT mapping change, RFC 7296 2.23)."""
        ...

    def delete_sa(self, spi: int, direction: Direction) -> None: ...

    def install_policy(self, policy: PolicyParams) -> None: ...

    def delete_policy(self, policy: PolicyParams) -> None: ...

    def query_usage(self, spi: int, direction: Direction) -> SaUsage: ...

    def add_vip(self, address: str) -> bool:
        """Make a virtual IP the peer assigned us (RFC 7296 §2.19) a local address, so traffic leaves
        from it; False when the host has that address already (then `del_vip` is not called for it)."""
        ...

    def del_vip(self, address: str) -> None:
        """Remove an address `add_vip` added (its IKE_SA is gone)."""
        ...

    def next_event(self) -> DataPlaneEvent | None:
        """Drain one pending event (None when empty)."""
        ...

    def close(self) -> None: ...


class DataPlaneError(LocalError):
    """A backend operation failed (kernel refused, unknown SA...)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


def declared_transforms(kind: str) -> EspTransforms | None:
    """The ESP transforms of the data plane `[daemon] dataplane = kind` names, known before it runs;
    None where that is not known yet (`auto`: XFRM or userspace, decided by the kernel at start-up)
    or nothing is installed (`none`)."""
    if kind == "userspace":
        return USERSPACE
    if kind == "xfrm":
        from .xfrm import XFRM_TRANSFORMS

        return XFRM_TRANSFORMS
    return None
