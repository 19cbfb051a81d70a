"""ME endpoints: values, priorities, the ME_ENDPOINT notify data codec and the choice of host candidates.

[ME] = draft-brunner-ikev2-mediation-00; wire layout as strongSwan's `endpoint_notify.c` (see
docs/protocol.md §2.3, §2.4, §4.2, §6.1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from ..constants import ME_TYPE_PREFERENCE, MeEndpointFamily, MeEndpointType, NotifyType
from ..errors import ProtocolError

Addr = tuple[str, int]
"""A transport address: (textual IP address, UDP port)."""

MAX_IP_PREF = 65535
# Our optional extension (docs/protocol.md §11.1: strongSwan's MS relays no data): a peer announces it
# accepts RELAYED endpoints by this Vendor ID in the mediation connection's IKE_SA_INIT; a server able to
# relay echoes it. charon never sends it, so nothing changes on the wire with strongSwan peers/servers.
RELAY_VENDOR_ID = b"ikeme relay 1"
IMPL_VENDOR_ID = b"ikeme 1"  # our clients announce themselves (the server adapts to strongSwan peers otherwise)
# [ME] §4.4.1 / strongSwan: data is 8 (no address), 12 (IPv4) or 24 (IPv6) octets
_LEN_BY_FAMILY = {MeEndpointFamily.NONE: 8, MeEndpointFamily.IPV4: 12, MeEndpointFamily.IPV6: 24}
# the wire values by octet: a dict lookup per received endpoint instead of an Enum call
_FAMILIES = {int(f): f for f in MeEndpointFamily}
_TYPES = {int(t): t for t in MeEndpointType}


def endpoint_priority(ep_type: MeEndpointType, ip_pref: int = MAX_IP_PREF) -> int:
    """[ME] §3.3.5.1: priority = 2^16 * type_pref + ip_pref (no component, unlike RFC 8445)."""
    if not 0 <= ip_pref <= MAX_IP_PREF:
        raise ValueError(f"ip_pref {ip_pref} outside 0..65535")
    return (ME_TYPE_PREFERENCE[ep_type] << 16) + ip_pref


# The same few addresses (own host candidates, the peer's, the server's) are parsed for every
# ME_CONNECT, check and endpoint: parsed once each, in bounded caches (an invalid one raises, uncached).
_CACHE = 1024


@lru_cache(maxsize=_CACHE)
def _parsed(address: str) -> tuple[MeEndpointFamily, str, bytes]:
    ip = ipaddress.ip_address(address)
    return (MeEndpointFamily.IPV4 if ip.version == 4 else MeEndpointFamily.IPV6), str(ip), ip.packed


def family_of(address: str) -> MeEndpointFamily:
    return _parsed(address)[0]


def normalize_address(address: str) -> str:
    """Canonical text form, so that addresses compare equal whatever their spelling."""
    return _parsed(address)[1]


@lru_cache(maxsize=_CACHE)
def _unpacked(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))


def normalize_addr(addr: Addr) -> Addr:
    return (normalize_address(addr[0]), int(addr[1]))


@dataclass(frozen=True)
class Endpoint:
    """An ME endpoint. `base` is local state only, never sent ([ME] §3.3; docs/protocol.md §1 "base").

    `address` is None for the address-less form (family NONE): srflx requests and check requests.
    """

    type: MeEndpointType
    family: MeEndpointFamily
    address: str | None
    port: int
    priority: int
    base: Addr | None = None

    @property
    def addr(self) -> Addr:
        if self.address is None:
            raise ValueError("address-less endpoint has no transport address")
        return (self.address, self.port)

    @property
    def local_base(self) -> Addr:
        """The base of a local endpoint: the address packets really leave from (host: itself)."""
        return self.base if self.base is not None else self.addr

    def __str__(self) -> str:
        where = "-" if self.address is None else f"{self.address}[{self.port}]"
        return f"{self.type._name_}:{where} prio {self.priority}"  # _name_: no enum property call


def make_endpoint(
    ep_type: MeEndpointType,
    address: str,
    port: int,
    *,
    base: Addr | None = None,
    ip_pref: int = MAX_IP_PREF,
    priority: int | None = None,
) -> Endpoint:
    """An endpoint with an address; priority from [ME] §3.3.5.1 unless given explicitly."""
    addr = normalize_address(address)
    prio = endpoint_priority(ep_type, ip_pref) if priority is None else priority
    return Endpoint(ep_type, family_of(addr), addr, port, prio,
                    normalize_addr(base) if base is not None else None)


def addressless_endpoint(ep_type: MeEndpointType, priority: int | None = None) -> Endpoint:
    """[ME] §3.3.2.2 / §5.1: the 8-octet form (srflx request, check request)."""
    prio = endpoint_priority(ep_type) if priority is None else priority
    return Endpoint(ep_type, MeEndpointFamily.NONE, None, 0, prio)


# --- ME_ENDPOINT notify data ([ME] §4.4.1, docs/protocol.md §2.3) ------------------------------------

def encode_endpoint(ep: Endpoint) -> bytes:
    """Priority(4) | Family(1) | Type(1) | Port(2) | Address(0/4/16), big-endian."""
    head = ep.priority.to_bytes(4, "big") + bytes([int(ep.family), int(ep.type)])
    if ep.family == MeEndpointFamily.NONE or ep.address is None:
        # docs/protocol.md §2.3: port 0 when there is no address
        return head[:4] + bytes([int(MeEndpointFamily.NONE), int(ep.type)]) + b"\x00\x00"
    return head + ep.port.to_bytes(2, "big") + _parsed(ep.address)[2]


def _syntax(msg: str) -> ProtocolError:
    return ProtocolError(msg, NotifyType.INVALID_SYNTAX)


def decode_endpoint(data: bytes) -> Endpoint:
    """Parse ME_ENDPOINT data; anything strongSwan would refuse -> ProtocolError(INVALID_SYNTAX).

    docs/protocol.md §4.2: length 8/12/24 only, family >= 3 invalid, type 0 or >= 5 invalid; the length must
    also match the family (8 = no address, 12 = IPv4, 24 = IPv6, §2.3). The same octets (the peers' host and
    server-reflexive endpoints, the addresses checks see) come with every setup: their (immutable) Endpoint
    is kept in a bounded cache; invalid data raises, uncached.
    """
    return _decoded(bytes(data))


@lru_cache(maxsize=_CACHE)
def _decoded(data: bytes) -> Endpoint:
    if len(data) not in (8, 12, 24):
        raise _syntax(f"ME_ENDPOINT data of {len(data)} octets (8, 12 or 24 expected)")
    priority = int.from_bytes(data[0:4], "big")
    family = _FAMILIES.get(data[4])
    if family is None:
        raise _syntax(f"ME_ENDPOINT with invalid family {data[4]}")
    ep_type = _TYPES.get(data[5])
    if ep_type is None:
        raise _syntax(f"ME_ENDPOINT with invalid type {data[5]}")
    if _LEN_BY_FAMILY[family] != len(data):
        raise _syntax(f"ME_ENDPOINT family {family.name} with {len(data)} octets")
    if family == MeEndpointFamily.NONE:
        # docs/protocol.md §2.3: for family 0 the port is not interpreted
        return Endpoint(ep_type, family, None, 0, priority)
    port = int.from_bytes(data[6:8], "big")
    return Endpoint(ep_type, family, _unpacked(data[8:]), port, priority)


# --- sets of endpoints -----------------------------------------------------------------------------

def remove_redundant(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """[ME] §3.3.4 / RFC 8445 5.1.3: same transport address and same base -> keep the higher priority.

    Order of the survivors is preserved (first occurrence of each key).
    """
    best: dict[tuple[Addr | None, Addr | None], Endpoint] = {}
    order: list[tuple[Addr | None, Addr | None]] = []
    for ep in endpoints:
        key = (None, ep.base) if ep.address is None else (ep.addr, ep.local_base)
        old = best.get(key)
        if old is None:
            order.append(key)
            best[key] = ep
        elif ep.priority > old.priority:
            best[key] = ep
    return [best[k] for k in order]


def limit_endpoints(endpoints: Sequence[Endpoint], maximum: int) -> list[Endpoint]:
    """[ME] §4.2 (draft): counts SHOULD be limited, dropping the lowest priority first.

    One RELAYED endpoint (the highest-priority one) is exempt: its type preference 0 ranks it last,
    yet it is the only candidate that works between endpoint-dependent NATs (our relay extension), so
    the others are trimmed to make room for it. Keeps the original order of the survivors.
    """
    if len(endpoints) <= maximum:
        return list(endpoints)
    if maximum <= 0:
        return []
    ranked = sorted(range(len(endpoints)), key=lambda i: -endpoints[i].priority)
    relayed = [i for i in ranked if endpoints[i].type == MeEndpointType.RELAYED][:1]
    others = [i for i in ranked if i not in relayed][:maximum - len(relayed)]
    keep = {*relayed, *others}
    return [ep for i, ep in enumerate(endpoints) if i in keep]


def is_usable_host_address(address: str) -> bool:
    """[ME] §3.3.1 / strongSwan: no loopback; also no unspecified, multicast or link-local v6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 6 and ip.is_link_local)


# RFC 8421 / RFC 6724 spirit (docs/protocol.md §11.2): a global IPv6 HOST ranks above an IPv4 HOST, so the v6
# host pair is checked first and selected as soon as it works (no wait for an equal-priority v4 pair).
# strongSwan gives every HOST 65535; the peers' pair priorities stay identical (both use the advertised
# values), so only the order among HOST pairs changes.
HOST_IP_PREF = {MeEndpointFamily.IPV6: MAX_IP_PREF, MeEndpointFamily.IPV4: MAX_IP_PREF - 1}


def host_endpoints(addresses: Iterable[str], port: int, ip_pref: int | None = None) -> list[Endpoint]:
    """One HOST endpoint per usable address (see `host_candidates`), all on the IKE socket's port.

    [ME] §3.3.1, docs/protocol.md §6.1: every regular local address, with the port of the mediation SA's
    local endpoint (normally 4500). `ip_pref` None: `HOST_IP_PREF` by family (IPv6 preferred).
    """
    return list(_host_endpoints(tuple(addresses), port, ip_pref))


@lru_cache(maxsize=_CACHE)
def _host_endpoints(addresses: tuple[str, ...], port: int, ip_pref: int | None) -> tuple[Endpoint, ...]:
    """host_endpoints, computed once per set of addresses: every ME_CONNECT (on the `up`'s critical path,
    at both peers) offers the same ones."""
    out = []
    for a in addresses:
        if not is_usable_host_address(a):
            continue
        addr = a.split("%", 1)[0]
        pref = HOST_IP_PREF[family_of(addr)] if ip_pref is None else ip_pref
        out.append(make_endpoint(MeEndpointType.HOST, addr, port, ip_pref=pref))
    return tuple(remove_redundant(out))


@dataclass(frozen=True)
class HostAddress:
    """One address configured on this host, as the adapter read it from the OS (the core never asks).

    `loopback`: the interface is a loopback one (IFF_LOOPBACK), e.g. tunnel-inner /32s put on `lo`;
    `usable`: the interface is up and the address can be a source (not tentative or failed DAD, RFC 4862 5.4).
    """

    address: str
    interface: str = ""
    loopback: bool = False
    usable: bool = True


WILDCARDS = {"0.0.0.0": 4, "::": 6}


def host_candidates(found: Iterable[HostAddress], bound: Collection[str], *,
                    exclude_interfaces: Collection[str] = (), exclude_addresses: Collection[str] = ()) -> list[str]:
    """[ME] §3.3.1: which local addresses become HOST endpoints: those the client can send checks and
    the mediated IKE_SA from. A pair on any other address costs a pacing interval ([ME] §5.1) and a
    check that can never leave.

    - `bound`: the addresses our IKE sockets are bound to; a wildcard ("0.0.0.0", "::") stands for
      every address of its family. An address without a socket cannot be a check's source.
    - loopback interfaces, interfaces that are down and addresses that cannot be a source are skipped,
      as are `is_usable_host_address` rejects (strongSwan skips loopback and down interfaces too);
    - `exclude_interfaces` / `exclude_addresses`: what we installed ourselves (our TUN device, virtual
      IPs): traffic to them runs inside the tunnel being set up, never beside it (strongSwan skips
      virtual IPs the same way).

    Returns canonical addresses, deduplicated, in the order found.
    """
    bound_set = {normalize_address(a.split("%", 1)[0]) for a in bound if is_ip(a.split("%", 1)[0])}
    families = {WILDCARDS[a] for a in bound_set if a in WILDCARDS}
    excluded = {normalize_address(a) for a in exclude_addresses if is_ip(a)}
    out: list[str] = []
    for h in found:
        raw = h.address.split("%", 1)[0]
        if h.loopback or not h.usable or h.interface in exclude_interfaces or not is_usable_host_address(raw):
            continue
        addr = normalize_address(raw)
        if addr in excluded or addr in out:
            continue
        if addr not in bound_set and ipaddress.ip_address(addr).version not in families:
            continue
        out.append(addr)
    return out


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def srflx_endpoint(address: str, port: int, base: Addr, ip_pref: int = MAX_IP_PREF) -> Endpoint:
    """[ME] §3.3.2: the server-reflexive endpoint learnt from the MS, base = local addr toward the MS."""
    return make_endpoint(MeEndpointType.SERVER_REFLEXIVE, address, port, base=base, ip_pref=ip_pref)


# a gateway's port mapping (PCP RFC 6887, NAT-PMP RFC 6886, UPnP IGD) is an inbound path the NAT promises,
# unlike the srflx endpoint it merely showed the server: ranked above every srflx and below every prflx
# and host endpoint (RFC 8445 §5.1.2.2 leaves the type preference of such candidates to the agent)
MAPPED_PRIORITY = ((ME_TYPE_PREFERENCE[MeEndpointType.SERVER_REFLEXIVE] + 1) << 16) + MAX_IP_PREF


def mapped_endpoint(address: str, port: int, base: Addr) -> Endpoint:
    """A port mapping made on the gateway, sent as a SERVER_REFLEXIVE endpoint ([ME] §3.3.2 has no type of
    its own for it) with MAPPED_PRIORITY; `base` is the local IKE socket the mapping points to."""
    return make_endpoint(MeEndpointType.SERVER_REFLEXIVE, address, port, base=base, priority=MAPPED_PRIORITY)


def relayed_endpoint(address: str, port: int) -> Endpoint:
    """[ME] §3.3.3 / RFC 8445 5.1.2.1: a RELAYED endpoint (type preference 0: the last resort)."""
    return make_endpoint(MeEndpointType.RELAYED, address, port)


def with_base(ep: Endpoint, base: Addr) -> Endpoint:
    return replace(ep, base=normalize_addr(base))
