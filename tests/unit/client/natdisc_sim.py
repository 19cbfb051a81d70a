"""An in-memory NAT in front of the mediation server's sans-IO STUN responder, for the discovery tests:
mapping (EIM/ADM/APDM), filtering (EIF/ADF/APDF), port allocation and hairpinning as RFC 4787 defines
them. Every datagram is a real STUN message (aioice's codec on the client side, the server's own code)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from mediation_server.stun import StunResponder, StunSettings

Addr = tuple[str, int]

A1, A2, P1, P2 = "198.51.100.1", "198.51.100.2", 3478, 3479
PUBLIC = "203.0.113.7"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SimNat:
    mapping: str = "EIM"          # EIM | ADM | APDM | none (no NAT at all)
    filtering: str = "APDF"       # EIF | ADF | APDF
    allocation: str = "preserving"  # preserving | sequential | random
    hairpin: bool = False
    server: StunResponder = field(default_factory=lambda: StunResponder(
        StunSettings(A1, P1, alt_port=P2, alt_address=A2)))
    next_port: int = 40000
    rng: random.Random = field(default_factory=lambda: random.Random(5))
    maps: dict[tuple[Addr, object], int] = field(default_factory=dict)
    perms: set[tuple[int, object]] = field(default_factory=set)
    ios: dict[Addr, SimIO] = field(default_factory=dict)
    sent_to_server: int = 0

    def _key(self, dst: Addr) -> object:
        return {"EIM": None, "ADM": dst[0], "APDM": dst}.get(self.mapping)

    def _port(self, src: Addr) -> int:
        if self.allocation == "preserving" and src[1] not in self.maps.values():
            return src[1]
        if self.allocation == "sequential":
            self.next_port += 1
            return self.next_port
        return self.rng.randrange(20000, 60000)

    def outbound(self, src: Addr, dst: Addr, data: bytes) -> None:
        if self.mapping == "none":
            pub: Addr = src
        else:
            k = (src, self._key(dst))
            if k not in self.maps:
                self.maps[k] = self._port(src)
            pub = (PUBLIC, self.maps[k])
            self.perms.add((pub[1], {"EIF": None, "ADF": dst[0], "APDF": dst}[self.filtering]))
        if dst[0] == PUBLIC:  # hairpin
            if self.hairpin:
                self._deliver(data, pub, dst[1])
            return
        self.sent_to_server += 1
        out = self.server.receive(data, pub, dst, 0.0)
        if out is not None:
            resp, origin, to = out
            self.inbound(resp, origin, to)

    def inbound(self, data: bytes, src: Addr, to: Addr) -> None:
        if self.mapping == "none":
            if to in self.ios:
                self.ios[to].q.append((data, src))
            return
        port = to[1]
        allowed = {(port, None), (port, src[0]), (port, src)} & self.perms
        if allowed:
            self._deliver(data, src, port)

    def _deliver(self, data: bytes, src: Addr, pub_port: int) -> None:
        for (lan, _), p in self.maps.items():
            if p == pub_port:
                self.ios[lan].q.append((data, src))
                return


class SimIO:
    def __init__(self, nat: SimNat, local: Addr, clock: FakeClock) -> None:
        self.nat = nat
        self.local = local
        self.clock = clock
        self.q: deque[tuple[bytes, Addr]] = deque()
        nat.ios[local] = self

    def send(self, data: bytes, dst: Addr) -> None:
        self.nat.outbound(self.local, dst, data)

    async def recv(self, deadline: float) -> tuple[bytes, Addr] | None:
        if self.q:
            return self.q.popleft()
        self.clock.t = max(self.clock.t, deadline)
        return None
