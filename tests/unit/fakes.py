"""Small stand-ins the unit tests share: a clock the test moves, and IPv4 packets as a TUN device
delivers them (RFC 791 header without options, checksum left zero: the data plane does not check it)."""

from __future__ import annotations

import struct


class Clock:
    """A monotonic clock that moves only when the test sets ``t``."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Wire:
    """A transport's sockets: what the daemon sends, kept."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, remote: tuple[str, int]) -> int:
        self.sent.append((data, remote))
        return len(data)


def ipv4(src: str, dst: str, proto: int = 17, sport: int = 1000, dport: int = 2000, filler: int = 16) -> bytes:
    """An IPv4 packet whose payload starts with the ports (UDP, TCP and SCTP put them first)."""
    payload = struct.pack(">HH", sport, dport) + b"x" * filler
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + payload
