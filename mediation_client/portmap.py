"""Port mapping on the gateway: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD, for the IKE port.

A mapped endpoint is an inbound path the gateway promises, so the mediation client offers it as a
candidate above its server-reflexive one (core_ike/me/endpoints.py `mapped_endpoint`). The mapping is
renewed at half its lifetime (RFC 6886 §3.3, RFC 6887 §11.2.1) and deleted on shutdown (lifetime 0,
RFC 6886 §3.4, RFC 6887 §15; UPnP DeletePortMapping).

Order: PCP first; a NAT-PMP gateway answers a PCP request with UNSUPP_VERSION (RFC 6887 §9), then
NAT-PMP; then UPnP IGD through the `miniupnpc` library (SSDP discovery, SOAP AddPortMapping), which
blocks and so runs in a worker thread. The PCP and NAT-PMP codecs are here: no maintained Python
library speaks them (PyPI's py-natpmp is NAT-PMP only and unmaintained since 2023).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .udprecv import recvfrom

log = logging.getLogger("mediation_client.portmap")

Addr = tuple[str, int]

PCP_PORT = 5351        # RFC 6887 §19.1 (the same port as NAT-PMP, RFC 6886 §3)
NATPMP_VERSION = 0
PCP_VERSION = 2
UDP = 17


class PortMapError(Exception):
    """A gateway refused or did not answer; the message says which protocol and why."""


# ---------------------------------------------------------------------------------------------- NAT-PMP

NATPMP_RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized/refused", 3: "network failure",
                  4: "out of resources", 5: "unsupported opcode"}  # RFC 6886 §3.5


def natpmp_map_request(internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """RFC 6886 §3.3: version 0, opcode 1 (UDP), reserved, internal port, suggested external port, lifetime."""
    return struct.pack("!BBHHHI", NATPMP_VERSION, 1, 0, internal_port, suggested_port, lifetime)


def natpmp_address_request() -> bytes:
    return struct.pack("!BB", NATPMP_VERSION, 0)  # RFC 6886 §3.2


@dataclass(frozen=True)
class NatPmpMapping:
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def natpmp_parse_map(data: bytes) -> NatPmpMapping:
    """RFC 6886 §3.3 response (16 octets, opcode 129); a non-zero result is a PortMapError."""
    if len(data) < 16:
        raise PortMapError(f"NAT-PMP: short response ({len(data)} octets)")
    ver, op, result, epoch, iport, eport, life = struct.unpack("!BBHIHHI", data[:16])
    if ver != NATPMP_VERSION or op != 129:
        raise PortMapError(f"NAT-PMP: unexpected version {ver} / opcode {op}")
    if result:
        raise PortMapError(f"NAT-PMP: {NATPMP_RESULTS.get(result, f'result {result}')}")
    return NatPmpMapping(epoch, iport, eport, life)


def natpmp_parse_address(data: bytes) -> str:
    """RFC 6886 §3.2 response (12 octets, opcode 128): the gateway's external address."""
    if len(data) < 12:
        raise PortMapError(f"NAT-PMP: short response ({len(data)} octets)")
    ver, op, result, _epoch = struct.unpack("!BBHI", data[:8])
    if ver != NATPMP_VERSION or op != 128:
        raise PortMapError(f"NAT-PMP: unexpected version {ver} / opcode {op}")
    if result:
        raise PortMapError(f"NAT-PMP: {NATPMP_RESULTS.get(result, f'result {result}')}")
    return str(ipaddress.IPv4Address(data[8:12]))


# ---------------------------------------------------------------------------------------------- PCP

PCP_RESULTS = {0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST",
               4: "UNSUPP_OPCODE", 5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE",
               8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL",
               12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS"}  # RFC 6887 §7.4


def _v6(ip: str) -> bytes:
    """RFC 6887 §5: addresses are 128 bits, IPv4 as IPv4-mapped IPv6."""
    a = ipaddress.ip_address(ip)
    return (a.packed if a.version == 6 else ipaddress.IPv6Address(f"::ffff:{a}").packed)


def _from_v6(b: bytes) -> str:
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


def pcp_map_request(nonce: bytes, client_ip: str, internal_port: int, lifetime: int,
                    suggested: Addr | None = None) -> bytes:
    """RFC 6887 §7.1 header + §11.1 MAP opcode data (UDP)."""
    if len(nonce) != 12:
        raise ValueError("PCP mapping nonce must be 12 octets")
    head = struct.pack("!BBHI", PCP_VERSION, 1, 0, lifetime) + _v6(client_ip)
    ext_ip = _v6(suggested[0]) if suggested else bytes(16) if ":" in client_ip else _v6("0.0.0.0")
    body = nonce + struct.pack("!B3xHH", UDP, internal_port, suggested[1] if suggested else 0) + ext_ip
    return head + body


@dataclass(frozen=True)
class PcpMapping:
    lifetime: int
    epoch: int
    nonce: bytes
    internal_port: int
    external: Addr


def pcp_parse_map(data: bytes) -> PcpMapping:
    """RFC 6887 §7.2 response header + §11.1 MAP data; a non-zero result is a PortMapError."""
    if len(data) < 24:
        raise PortMapError(f"PCP: short response ({len(data)} octets)")
    ver, r_op, _res, result, lifetime, epoch = struct.unpack("!BBBBII", data[:12])
    if ver != PCP_VERSION:
        raise PortMapError(f"PCP: {PCP_RESULTS.get(result, 'version')} (version {ver})")
    if r_op != 0x81:
        raise PortMapError(f"PCP: unexpected opcode {r_op:#x}")
    if result:
        raise PortMapError(f"PCP: {PCP_RESULTS.get(result, f'result {result}')}")
    if len(data) < 24 + 36:
        raise PortMapError(f"PCP: short MAP response ({len(data)} octets)")
    nonce = data[24:36]
    proto, iport, eport = struct.unpack("!B3xHH", data[36:44])
    if proto != UDP:
        raise PortMapError(f"PCP: MAP for protocol {proto}, asked for UDP")
    return PcpMapping(lifetime, epoch, nonce, iport, (_from_v6(data[44:60]), eport))


def is_unsupported_version(data: bytes) -> bool:
    """A NAT-PMP-only gateway answers a PCP request with version 0 and result 1 (RFC 6887 §9)."""
    return len(data) >= 4 and data[0] == NATPMP_VERSION and struct.unpack("!H", data[2:4])[0] == 1


# ---------------------------------------------------------------------------------------------- exchanges


@dataclass
class Mapping:
    protocol: str          # pcp | nat-pmp | upnp
    gateway: str
    internal: Addr
    external: Addr
    lifetime: int          # seconds granted
    obtained: float        # monotonic time of the grant
    nonce: bytes = b""     # PCP

    def renew_at(self) -> float:
        return self.obtained + max(self.lifetime / 2, 1.0)  # RFC 6886 §3.3 / RFC 6887 §11.2.1

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "gateway": self.gateway,
                "internal": f"{self.internal[0]}[{self.internal[1]}]",
                "external": f"{self.external[0]}[{self.external[1]}]", "lifetime": self.lifetime}


async def _udp_exchange(gateway: str, data: bytes, accept: Callable[[bytes], bool], tries: int = 3,
                        rto: float = 0.25, bind: str = "") -> bytes:
    """Send to gateway:5351 with doubling timeouts (RFC 6886 §3.1, RFC 6887 §8.1.1) until `accept`."""
    fam = socket.AF_INET6 if ipaddress.ip_address(gateway).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind((bind, 0))
        for _ in range(tries):
            try:
                s.sendto(data, (gateway, PCP_PORT))
            except OSError as e:
                raise PortMapError(f"{gateway}[{PCP_PORT}]: {e.strerror or e}") from None
            deadline = time.monotonic() + rto
            while (left := deadline - time.monotonic()) > 0:
                try:
                    resp, src = await asyncio.wait_for(recvfrom(s, 1100), left)
                except TimeoutError:
                    break
                except ConnectionRefusedError:
                    raise PortMapError(f"nothing listens on {gateway}[{PCP_PORT}]") from None
                except OSError:
                    continue
                if src[0] == gateway and accept(resp):  # RFC 6886 §3.1: only from the gateway
                    return resp
            rto *= 2
    raise PortMapError(f"no answer from {gateway}[{PCP_PORT}]")


async def pcp_map(gateway: str, internal: Addr, lifetime: int, nonce: bytes | None = None,
                  suggested: Addr | None = None) -> Mapping:
    nonce = nonce or os.urandom(12)
    req = pcp_map_request(nonce, internal[0], internal[1], lifetime, suggested)

    def ours(resp: bytes) -> bool:
        return is_unsupported_version(resp) or (len(resp) >= 36 and resp[24:36] == nonce) or \
            (len(resp) >= 4 and resp[0] == PCP_VERSION and resp[3] != 0)

    resp = await _udp_exchange(gateway, req, ours, bind=internal[0])
    if is_unsupported_version(resp):
        raise PortMapError("PCP: UNSUPP_VERSION (a NAT-PMP gateway)")
    m = pcp_parse_map(resp)
    return Mapping("pcp", gateway, internal, m.external, m.lifetime, time.monotonic(), nonce)


async def natpmp_map(gateway: str, internal: Addr, lifetime: int, suggested: int | None = None) -> Mapping:
    """`suggested` None: the internal port; a deletion (lifetime 0) suggests 0 (RFC 6886 §3.4)."""
    sugg = internal[1] if suggested is None else suggested
    resp = await _udp_exchange(gateway, natpmp_map_request(internal[1], sugg, lifetime),
                               lambda r: len(r) >= 2 and r[1] == 129, bind=internal[0])
    m = natpmp_parse_map(resp)
    ext = "" if lifetime == 0 else natpmp_parse_address(await _udp_exchange(
        gateway, natpmp_address_request(), lambda r: len(r) >= 2 and r[1] == 128, bind=internal[0]))
    return Mapping("nat-pmp", gateway, internal, (ext, m.external_port), m.lifetime, time.monotonic())


def _upnp_map(internal: Addr, lifetime: int, delete: Addr | None = None) -> Mapping:
    """UPnP IGD through miniupnpc (blocking: SSDP discovery, then SOAP)."""
    import miniupnpc  # type: ignore[import-not-found]  # only when UPnP is tried

    u = miniupnpc.UPnP()
    u.discoverdelay = 1000
    try:
        if u.discover() == 0:
            raise PortMapError("UPnP: no IGD answered SSDP discovery")
        u.selectigd()
        if delete is not None:
            u.deleteportmapping(delete[1], "UDP")
            return Mapping("upnp", "", internal, delete, 0, time.monotonic())
        ext_ip = str(u.externalipaddress())
        ok = u.addportmapping(internal[1], "UDP", internal[0], internal[1], "ikeme IKE", "", lifetime)
        port = internal[1]
        if not ok:
            port = int(u.addanyportmapping(internal[1], "UDP", internal[0], internal[1], "ikeme IKE", "", lifetime))
        return Mapping("upnp", "IGD", internal, (ext_ip, port), lifetime, time.monotonic())
    except Exception as e:  # miniupnpc raises plain Exception with the SOAP error text
        if isinstance(e, PortMapError):
            raise
        raise PortMapError(f"UPnP: {e}") from None


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway (RFC 6886 §3: NAT-PMP and PCP talk to it)."""
    try:
        with open(route_file) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) > 3 and parts[1] == "00000000" and int(parts[3], 16) & 2:
                    return str(ipaddress.IPv4Address(struct.pack("<I", int(parts[2], 16))))
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class PortMapConfig:
    lifetime: int = 7200         # requested, seconds (RFC 6886 §3.3 recommends 7200)
    protocols: tuple[str, ...] = ("pcp", "nat-pmp", "upnp")


class PortMapper:
    """One mapping of our IKE port, kept alive: `run()` maps, renews at half-life, re-maps after a loss;
    `close()` deletes it. `mapping` is the current one (None: none, `error` says why)."""

    def __init__(self, internal: Addr, cfg: PortMapConfig | None = None, gateway: str | None = None,
                 on_change: Callable[[Mapping | None], None] | None = None) -> None:
        self.internal = internal
        self.cfg = cfg or PortMapConfig()
        self.gateway = gateway
        self.mapping: Mapping | None = None
        self.error = ""
        self.on_change = on_change
        self.renewals = 0

    async def map_once(self) -> Mapping:
        gw = self.gateway or default_gateway()
        errors = []
        for proto in self.cfg.protocols:
            try:
                if proto == "pcp" and gw:
                    m = await pcp_map(gw, self.internal, self.cfg.lifetime,
                                      self.mapping.nonce if self.mapping and self.mapping.protocol == "pcp" else None)
                elif proto == "nat-pmp" and gw:
                    m = await natpmp_map(gw, self.internal, self.cfg.lifetime)
                elif proto == "upnp":
                    m = await asyncio.to_thread(_upnp_map, self.internal, self.cfg.lifetime)
                else:
                    continue
            except (PortMapError, OSError) as e:
                errors.append(str(e))
                continue
            if m.lifetime <= 0 or not m.external[0] or m.external[1] == 0:
                errors.append(f"{proto}: no usable mapping ({m.external}, lifetime {m.lifetime})")
                continue
            return m
        raise PortMapError("; ".join(errors) or "no default gateway")

    async def run(self) -> None:
        """Map, then renew at half the granted lifetime; after a failure retry after a minute."""
        while True:
            try:
                m = await self.map_once()
            except PortMapError as e:
                (log.info if str(e) != self.error else log.debug)("port mapping of %s[%d]: none (%s)",
                                                                   *self.internal, e)
                self.error = str(e)
                if self.mapping is not None:
                    self._set(None)
                await asyncio.sleep(60)  # a gateway may start offering it later
                continue
            renewed = self.mapping is not None
            self.error = ""
            if renewed:
                self.renewals += 1
            if self.mapping is None or m.external != self.mapping.external:
                log.info("port mapping (%s at %s): %s[%d] -> %s[%d], lifetime %d s", m.protocol, m.gateway or "IGD",
                         *self.internal, *m.external, m.lifetime)
                self._set(m)
            else:
                self.mapping = m
            await asyncio.sleep(max(m.renew_at() - time.monotonic(), 1.0))

    def _set(self, m: Mapping | None) -> None:
        self.mapping = m
        if self.on_change is not None:
            self.on_change(m)

    async def close(self) -> None:
        """Delete the mapping (lifetime 0) on the protocol that made it."""
        m = self.mapping
        if m is None:
            return
        self.mapping = None
        try:
            if m.protocol == "pcp":
                await pcp_map(m.gateway, m.internal, 0, m.nonce)
            elif m.protocol == "nat-pmp":
                await natpmp_map(m.gateway, m.internal, 0, 0)
            else:
                await asyncio.to_thread(_upnp_map, m.internal, 0, m.external)
            log.info("port mapping %s[%d] deleted (%s)", *m.external, m.protocol)
        except (PortMapError, OSError) as e:
            log.warning("port mapping %s[%d] not deleted: %s", *m.external, e)
