"""The engine's side of the UDP transport (core_ike/io/transport.py) for the transport's own tests: it
keeps what it received, hands over what a test queued in `out`, and has no timer and no events; plus
the transport started on the running loop, and a client socket to talk to it."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core_ike.io.transport import UdpTransport

Addr = tuple[str, int]


class StubEngine:
    natt_port = -1  # no NAT-T port unless a test names one

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Addr, Addr]] = []  # (data, local, remote)
        self.out: list[tuple[bytes, Addr, Addr]] = []  # answers to send: (data, local, remote)

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        self.got.append((data, local, remote))

    def datagrams_to_send(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def next_event(self) -> Any:
        return None


@contextmanager
def started(engine: StubEngine, addrs: Sequence[str] = ("127.0.0.1",), ports: Sequence[int] = (0,)
            ) -> Iterator[UdpTransport]:
    """A transport for `engine` on every address and port (0: one the kernel picks), reading on the
    running event loop; closed afterwards."""
    t = UdpTransport(engine, list(addrs), list(ports))  # type: ignore[arg-type]
    t.start()
    try:
        yield t
    finally:
        t.close()


@contextmanager
def client(ip: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A non-blocking UDP socket bound to `ip` (a port the kernel picks); closed afterwards."""
    c = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.bind((ip, 0))
        c.setblocking(False)
        yield c
    finally:
        c.close()


def count_batches(t: UdpTransport) -> list[int]:
    """A counter (its one item) of the read batches that delivered datagrams: the transport settles the
    engine (Engine.prepare, the timer) once at the end of each batch it read."""
    batches = [0]
    settle = t._settle

    def counted() -> None:
        batches[0] += 1 if t.stats["rx"] else 0
        settle()

    t._settle = counted  # type: ignore[method-assign]
    return batches
