"""The transport's receive side under a flood (core_ike/io/transport.py): each (address, port) has three
sockets in one SO_REUSEPORT group, and a classic BPF program queues new IKE_SA_INIT requests apart from
everything else (with and without a leading notify apart too), so a flood of them cannot overflow the
queue of IKE_SAs being set up or in use; the port still cannot be shared with another program."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from core_ike.errors import LocalError
from core_ike.io.transport import UdpTransport


class _Engine:
    natt_port = 4500

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        self.got.append((data, local))

    def datagrams_to_send(self) -> list[Any]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def next_event(self) -> Any:
        return None


def _ike(exchange: int, flags: int, spi_r: bytes, first: int) -> bytes:
    return b"\x11" * 8 + spi_r + bytes([first, 0x20, exchange, flags]) + struct.pack("!II", 0, 28)


INIT = _ike(34, 0x08, bytes(8), 33)  # SA first: no cookie
INIT_COOKIE = _ike(34, 0x08, bytes(8), 41)  # N(COOKIE) first
AUTH = _ike(35, 0x08, b"\x22" * 8, 46)
INIT_RESPONSE = _ike(34, 0x20, b"\x22" * 8, 33)


def _queue_of(t: UdpTransport, data: bytes, port: int) -> int:
    """Index of the socket (0: the main one, 1, 2: the IKE_SA_INIT queues) `data` is queued to."""
    socks = [t.sockets[("127.0.0.1", port)], *[q for q in t._queues if q.getsockname()[1] == port]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(data, ("127.0.0.1", port))
    for _ in range(100):
        for i, s in enumerate(socks):
            try:
                got = s.recv(65535)
            except BlockingIOError:
                continue
            assert got == data
            return i
    raise AssertionError("datagram not received")


def test_new_ike_sa_init_requests_have_queues_of_their_own() -> None:
    async def run() -> None:
        t = UdpTransport(_Engine(), ["127.0.0.1"], [0])
        t.engine.natt_port = -1
        t.start()
        try:
            (port,) = [p for _, p in t.sockets]
            assert len(t._queues) == 2
            for s in [t.sockets[("127.0.0.1", port)], *t._queues]:
                asyncio.get_running_loop().remove_reader(s.fileno())  # read by hand below
            assert [_queue_of(t, d, port) for d in (INIT, INIT_COOKIE, AUTH, INIT_RESPONSE, b"\x01" * 5)] == \
                [2, 1, 0, 0, 0]
        finally:
            t.close()

    asyncio.run(run())


def test_natt_port_steering_reads_behind_the_non_esp_marker() -> None:
    async def run() -> None:
        eng = _Engine()
        t = UdpTransport(eng, ["127.0.0.1"], [0])
        t.start()
        try:
            (port,) = [p for _, p in t.sockets]
            t.close()
            eng.natt_port = port  # the same port again, now as the NAT-T port
            t = UdpTransport(eng, ["127.0.0.1"], [port])
            t.start()
            for s in [t.sockets[("127.0.0.1", port)], *t._queues]:
                asyncio.get_running_loop().remove_reader(s.fileno())
            marker = b"\x00" * 4
            esp = b"\x00\x00\x12\x34" + INIT[4:]  # an ESP packet (SPI 0x1234) that looks like one after 4 octets
            assert [_queue_of(t, d, port) for d in (marker + INIT, marker + INIT_COOKIE, marker + AUTH, esp, b"\xff")] \
                == [2, 1, 0, 0, 0]
        finally:
            t.close()

    asyncio.run(run())


def test_datagrams_of_every_queue_reach_the_engine() -> None:
    async def run() -> None:
        eng = _Engine()
        t = UdpTransport(eng, ["127.0.0.1"], [0])
        eng.natt_port = -1
        t.start()
        try:
            (port,) = [p for _, p in t.sockets]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                for d in (INIT, INIT_COOKIE, AUTH):
                    c.sendto(d, ("127.0.0.1", port))
            for _ in range(100):
                if len(eng.got) == 3:
                    break
                await asyncio.sleep(0.01)
            assert sorted(d for d, _ in eng.got) == sorted([INIT, INIT_COOKIE, AUTH])
            assert {local for _, local in eng.got} == {("127.0.0.1", port)}
        finally:
            t.close()

    asyncio.run(run())


def test_the_port_is_still_not_shared() -> None:
    """A second daemon (which would join the SO_REUSEPORT group) and any other program fail to bind."""
    async def run() -> None:
        t = UdpTransport(_Engine(), ["127.0.0.1"], [0])
        t.start()
        try:
            (port,) = [p for _, p in t.sockets]
            second = UdpTransport(_Engine(), ["127.0.0.1"], [port])
            with pytest.raises(LocalError, match="in use"):
                second.start()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        finally:
            t.close()

    asyncio.run(run())
