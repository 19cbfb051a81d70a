"""NAT behaviour discovery with STUN (RFC 5780 §4), against the mediation server's STUN responder.

What is measured, in RFC 4787 / RFC 5780 terms:

- mapping (RFC 5780 §4.3): endpoint-independent (EIM), address-dependent (ADM) or address-and-port-
  dependent (APDM); "none" when the mapped address is our own (no NAT);
- filtering (RFC 5780 §4.4): endpoint-independent (EIF), address-dependent (ADF) or address-and-port-
  dependent (APDF);
- port preservation (RFC 4787 §4.1): the mapped port equals the local port;
- port allocation of an APDM NAT: the step between the ports of consecutive mappings ("sequential" when
  small and constant, else "random"), which port prediction needs;
- hairpinning (RFC 5780 §4.5): a datagram sent to our own mapped address comes back to us.

The tests need a server with a second address and a second port (OTHER-ADDRESS, RFC 5780 §7.4). With
only a second port, EIM cannot be told from ADM, nor EIF from ADF: the result says so ("EIM|ADM").

The exchange runs over a `DatagramIO` (send + receive with a deadline), so the unit tests drive it with
a simulated NAT in memory; `UdpIO` is the socket implementation. The codec is aioice's (`aioice.stun`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from aioice import stun

from .udprecv import recvfrom

Addr = tuple[str, int]

CHANGE_IP = 0x04   # RFC 5780 §7.2
CHANGE_PORT = 0x02

SEQUENTIAL_MAX_STEP = 10  # ports between consecutive mappings of one host that still count as sequential


class DatagramIO(Protocol):
    local: Addr

    def send(self, data: bytes, dst: Addr) -> None: ...

    async def recv(self, deadline: float) -> tuple[bytes, Addr] | None: ...


@dataclass(frozen=True)
class DiscoveryConfig:
    """`rto`: first retransmission timeout; `retries`: transmissions per test (RFC 5389 §7.2.1 uses
    500 ms and 7; discovery on a NAT path needs less: a filtered test costs rto * (2**retries - 1))."""

    rto: float = 0.2
    retries: int = 3


@dataclass
class NatBehaviour:
    """The result, as `ikectl status`, the client DB and the mediation server show it."""

    mapping: str = "unknown"       # none | EIM | ADM | APDM | EIM|ADM | unknown
    filtering: str = "unknown"     # none | EIF | ADF | APDF | EIF|ADF | unknown
    port_preservation: bool | None = None
    allocation: str = "unknown"    # preserving | sequential | random | unknown (the ports of new mappings)
    port_step: int | None = None   # the step between consecutive mappings' ports (APDM)
    last_port: int | None = None   # the public port of the newest mapping seen (sequential: the next follow)
    hairpinning: bool | None = None
    local: str = ""
    mapped: str = ""               # our mapped (server-reflexive) address toward the primary server address
    server: str = ""
    rfc5780: str = "none"          # what the server offers: full (address + port) | port | none
    error: str = ""
    packets: int = 0               # STUN requests sent
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.error:
            return f"unknown ({self.error})"
        parts = [f"mapping {self.mapping}", f"filtering {self.filtering}"]
        if self.port_preservation is not None:
            parts.append("port preserving" if self.port_preservation else "port not preserved")
        if self.allocation in ("sequential", "random") and self.mapping not in ("EIM", "none"):
            parts.append(f"{self.allocation} ports" + (f" (step {self.port_step})" if self.port_step else ""))
        if self.hairpinning is not None:
            parts.append("hairpinning" if self.hairpinning else "no hairpinning")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Observations:
    """What the tests saw (None: no answer). Keys of `mapped`: the server transport address asked."""

    local: Addr
    primary: Addr
    other: Addr | None = None
    mapped: dict[Addr, Addr | None] = field(default_factory=dict)
    filter_change_both: bool | None = None   # RFC 5780 §4.4 test II: answer from the other address and port
    filter_change_port: bool | None = None   # test III: from the other port
    hairpin: bool | None = None
    extra_mapped: list[Addr] = field(default_factory=list)  # later mappings toward new ports (allocation)


def classify(obs: Observations) -> NatBehaviour:
    """RFC 5780 §4.3-§4.5 from the observations (pure)."""
    r = NatBehaviour(local=_fmt(obs.local), server=_fmt(obs.primary))
    x1 = obs.mapped.get(obs.primary)
    if x1 is None:
        r.error = f"no STUN answer from {_fmt(obs.primary)}"
        return r
    r.mapped = _fmt(x1)
    r.port_preservation = x1[1] == obs.local[1]
    other = obs.other
    has_addr = other is not None and other[0] != obs.primary[0]
    has_port = other is not None and other[1] != obs.primary[1]
    r.rfc5780 = "full" if has_addr and has_port else "port" if has_port else "address" if has_addr else "none"
    if _same_host(x1, obs.local):
        r.mapping = "none"
        r.allocation = "preserving"
    elif other is None:
        r.notes.append("the server offers no second address or port (RFC 5780): mapping and filtering unknown")
    else:
        r.mapping = _mapping(obs, x1, other, has_addr)
    if r.mapping != "none" and other is not None:
        r.filtering = _filtering(obs, has_addr, has_port)
    elif r.mapping == "none":
        r.filtering = _filtering(obs, has_addr, has_port) if other is not None else "unknown"
        if r.filtering == "EIF":
            r.filtering = "none"
    r.allocation, r.port_step = _allocation(obs, x1, r.mapping)
    if r.allocation == "sequential":
        r.last_port = _last_port(obs, x1)
    r.hairpinning = obs.hairpin
    return r


def _mapping(obs: Observations, x1: Addr, other: Addr, has_addr: bool) -> str:
    if has_addr:
        x2 = obs.mapped.get((other[0], obs.primary[1]))
        if x2 is None:
            return "unknown"
        if x2 == x1:
            return "EIM"
        x3 = obs.mapped.get(other)
        if x3 is None or other[1] == obs.primary[1]:
            return "ADM|APDM"
        return "ADM" if x3 == x2 else "APDM"
    x2 = obs.mapped.get((obs.primary[0], other[1]))
    if x2 is None:
        return "unknown"
    return "EIM|ADM" if x2 == x1 else "APDM"


def _filtering(obs: Observations, has_addr: bool, has_port: bool) -> str:
    if has_addr and has_port and obs.filter_change_both:
        return "EIF"
    if has_port and obs.filter_change_port is not None:
        if obs.filter_change_port:
            return "ADF" if has_addr else "EIF|ADF"
        return "APDF"
    return "unknown"


def _allocation(obs: Observations, x1: Addr, mapping: str) -> tuple[str, int | None]:
    if mapping in ("none", "EIM", "EIM|ADM"):
        return ("preserving" if x1[1] == obs.local[1] else "unknown"), None
    ports = [x1[1]] + [m[1] for m in (obs.mapped.get(k) for k in obs.mapped if k != obs.primary)
                       if m is not None and m[1] != x1[1]] + [m[1] for m in obs.extra_mapped]
    ports = list(dict.fromkeys(ports))
    if len(ports) < 3:
        return "unknown", None
    steps = [(b - a) % 65536 for a, b in itertools.pairwise(ports)]
    if all(0 < s <= SEQUENTIAL_MAX_STEP for s in steps):
        return "sequential", min(steps)
    return "random", None


def _last_port(obs: Observations, x1: Addr) -> int:
    """The newest mapping's port: the tests ran in the order `mapped` holds them, then `extra_mapped`."""
    seen = [x1] + [m for m in obs.mapped.values() if m is not None] + obs.extra_mapped
    return seen[-1][1]


def _same_host(mapped: Addr, local: Addr) -> bool:
    return mapped == local or (local[0] in ("0.0.0.0", "::") and mapped[1] == local[1] and _is_local(mapped[0]))


def _is_local(ip: str) -> bool:
    try:
        s = socket.socket(socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET,
                          socket.SOCK_DGRAM)
    except ValueError:
        return False
    try:
        s.bind((ip, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _fmt(a: Addr | None) -> str:
    return f"{a[0]}[{a[1]}]" if a else ""


# ---------------------------------------------------------------------------------------------- the exchange


class StunClient:
    """Binding transactions over one DatagramIO (RFC 5389 §7.2.1: retransmit with doubling RTO)."""

    def __init__(self, io: DatagramIO, cfg: DiscoveryConfig, clock: Any = time.monotonic) -> None:
        self.io = io
        self.cfg = cfg
        self.clock = clock
        self.sent = 0

    async def binding(self, dst: Addr, change: int = 0) -> tuple[stun.Message, Addr] | None:
        """The Binding success response (and where it came from), or None when nothing answered."""
        req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=os.urandom(12))
        if change:
            req.attributes["CHANGE-REQUEST"] = change
        data = bytes(req)
        rto = self.cfg.rto
        for _ in range(self.cfg.retries):
            self.io.send(data, dst)
            self.sent += 1
            deadline = self.clock() + rto
            while True:
                got = await self.io.recv(deadline)
                if got is None:
                    break
                resp = _parse(got[0])
                if resp is None or resp.transaction_id != req.transaction_id:
                    continue  # a late answer of an earlier test, or noise
                if resp.message_class != stun.Class.RESPONSE:
                    return None  # an error response (420: the server cannot make that change)
                return resp, got[1]
            rto *= 2
        return None

    async def hairpin(self, target: Addr, other: DatagramIO) -> bool:
        """RFC 5780 §4.5: a request from `other` to our own mapped address `target` reaches `self.io`."""
        req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=os.urandom(12))
        data = bytes(req)
        rto = self.cfg.rto
        for _ in range(self.cfg.retries):
            other.send(data, target)
            self.sent += 1
            deadline = self.clock() + rto
            while (got := await self.io.recv(deadline)) is not None:
                m = _parse(got[0])
                if m is not None and m.transaction_id == req.transaction_id:
                    return True
            rto *= 2
        return False


def _parse(data: bytes) -> stun.Message | None:
    try:
        return stun.parse_message(data)
    except ValueError:
        return None


def _mapped_of(resp: stun.Message) -> Addr | None:
    a = resp.attributes.get("XOR-MAPPED-ADDRESS") or resp.attributes.get("MAPPED-ADDRESS")
    return (str(a[0]), int(a[1])) if a else None


async def discover(io: DatagramIO, server: Addr, cfg: DiscoveryConfig | None = None,
                   hairpin_io: DatagramIO | None = None, clock: Any = time.monotonic) -> NatBehaviour:
    """Run RFC 5780 §4.3-§4.5 against `server` (its primary transport address) and classify."""
    cfg = cfg or DiscoveryConfig()
    c = StunClient(io, cfg, clock)
    obs = Observations(local=io.local, primary=server)
    first = await c.binding(server)
    if first is None:
        r = classify(obs)
        r.packets = c.sent
        return r
    obs.mapped[server] = _mapped_of(first[0])
    other = first[0].attributes.get("OTHER-ADDRESS")
    if other is not None:
        # a server bound to the wildcard names no address of its own: its other port is on the same one
        o_ip = str(other[0])
        obs.other = (server[0] if ipaddress.ip_address(o_ip).is_unspecified else o_ip, int(other[1]))
    o = obs.other
    if o is not None:
        # RFC 5780 §4.4 first, while only the primary address has seen this mapping: an answer from
        # the other address and port (test II), then from the other port alone (test III)
        if o[0] != server[0] and o[1] != server[1]:
            obs.filter_change_both = await c.binding(server, CHANGE_IP | CHANGE_PORT) is not None
        if o[1] != server[1]:
            obs.filter_change_port = await c.binding(server, CHANGE_PORT) is not None
        # RFC 5780 §4.3 tests II and III: the mapping toward the other address, then the other address and port
        targets = []
        if o[0] != server[0]:
            targets += [(o[0], server[1])] + ([o] if o[1] != server[1] else [])
        elif o[1] != server[1]:
            targets.append((server[0], o[1]))
        for t in targets:
            got = await c.binding(t)
            obs.mapped[t] = _mapped_of(got[0]) if got else None
        # a fourth destination tells sequential from random port allocation (APDM)
        if o[0] != server[0] and o[1] != server[1]:
            got = await c.binding((server[0], o[1]))
            if got is not None and (m := _mapped_of(got[0])) is not None:
                obs.extra_mapped.append(m)
    x1 = obs.mapped.get(server)
    if hairpin_io is not None and x1 is not None and x1[0] != io.local[0]:
        obs.hairpin = await c.hairpin(x1, hairpin_io)
    r = classify(obs)
    r.packets = c.sent
    return r


# ---------------------------------------------------------------------------------------------- sockets


class UdpIO:
    """A non-blocking UDP socket with an awaitable receive."""

    def __init__(self, bind: Addr) -> None:
        fam = socket.AF_INET6 if ipaddress.ip_address(bind[0]).version == 6 else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(bind)
        except OSError:
            self.sock.close()
            raise
        a = self.sock.getsockname()
        self.local: Addr = (str(a[0]), int(a[1]))

    def send(self, data: bytes, dst: Addr) -> None:
        # unreachable now: the test sees no answer, which is what it measures
        with contextlib.suppress(OSError):
            self.sock.sendto(data, dst)

    async def recv(self, deadline: float) -> tuple[bytes, Addr] | None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                data, src = await asyncio.wait_for(recvfrom(self.sock, 2048), left)
            except TimeoutError:
                return None
            except OSError:
                continue  # ICMP port unreachable of an earlier send
            return data, (str(src[0]), int(src[1]))
        return None

    def close(self) -> None:
        self.sock.close()


async def discover_udp(local_ip: str, server: Addr, cfg: DiscoveryConfig | None = None,
                       hairpin: bool = True) -> NatBehaviour:
    """Discovery from two fresh sockets on `local_ip` (the second one only for the hairpin test)."""
    io = UdpIO((local_ip, 0))
    other = UdpIO((local_ip, 0)) if hairpin else None
    try:
        return await discover(io, server, cfg, other)
    finally:
        io.close()
        if other is not None:
            other.close()


def source_address_for(dst: str) -> str:
    """The local address the kernel picks toward `dst` (a connected UDP socket sends nothing)."""
    fam = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])
