"""The transport's receive side under a flood (core_ike/io/transport.py): each (address, port) has three
sockets in one SO_REUSEPORT group, and a classic BPF program queues new IKE_SA_INIT requests apart from
everything else (with and without a leading notify apart too), so a flood of them cannot overflow the
queue of IKE_SAs being set up or in use; the port still cannot be shared with another program."""

from __future__ import annotations

import asyncio
import select
import socket
import struct

import pytest

from core_ike.errors import LocalError
from core_ike.io.transport import UdpTransport
from tests.unit.daemon.flushwait import after_batches
from tests.unit.daemon.stubengine import StubEngine, client, started


def _ike(exchange: int, flags: int, spi_r: bytes, first: int) -> bytes:
    return b"\x11" * 8 + spi_r + bytes([first, 0x20, exchange, flags]) + struct.pack("!II", 0, 28)


INIT = _ike(34, 0x08, bytes(8), 33)  # SA first: no cookie
INIT_COOKIE = _ike(34, 0x08, bytes(8), 41)  # N(COOKIE) first
AUTH = _ike(35, 0x08, b"\x22" * 8, 46)
INIT_RESPONSE = _ike(34, 0x20, b"\x22" * 8, 33)


def _queue_of(t: UdpTransport, data: bytes, port: int) -> int:
    """Index of the socket (0: the main one, 1, 2: the IKE_SA_INIT queues) `data` is queued to."""
    socks = [t.sockets[("127.0.0.1", port)], *[q for q in t._queues if q.getsockname()[1] == port]]
    with client() as c:
        c.sendto(data, ("127.0.0.1", port))
    ready, _, _ = select.select(socks, [], [], 5.0)  # a deadline, not a sleep: on loopback ready at once
    assert len(ready) == 1, f"datagram received on {len(ready)} sockets"
    assert ready[0].recv(65535) == data
    return socks.index(ready[0])


def test_new_ike_sa_init_requests_have_queues_of_their_own() -> None:
    async def run() -> None:
        with started(StubEngine()) as t:
            (port,) = [p for _, p in t.sockets]
            assert len(t._queues) == 2
            for s in [t.sockets[("127.0.0.1", port)], *t._queues]:
                asyncio.get_running_loop().remove_reader(s.fileno())  # read by hand below
            assert [_queue_of(t, d, port) for d in (INIT, INIT_COOKIE, AUTH, INIT_RESPONSE, b"\x01" * 5)] == \
                [2, 1, 0, 0, 0]

    asyncio.run(run())


def test_natt_port_steering_reads_behind_the_non_esp_marker() -> None:
    async def run() -> None:
        eng = StubEngine()
        with started(eng) as t:
            (port,) = [p for _, p in t.sockets]
        eng.natt_port = port  # the same port again, now as the NAT-T port
        with started(eng, ports=[port]) as t:
            for s in [t.sockets[("127.0.0.1", port)], *t._queues]:
                asyncio.get_running_loop().remove_reader(s.fileno())
            marker = b"\x00" * 4
            esp = b"\x00\x00\x12\x34" + INIT[4:]  # an ESP packet (SPI 0x1234) that looks like one after 4 octets
            assert [_queue_of(t, d, port) for d in (marker + INIT, marker + INIT_COOKIE, marker + AUTH, esp, b"\xff")] \
                == [2, 1, 0, 0, 0]

    asyncio.run(run())


def test_datagrams_of_every_queue_reach_the_engine() -> None:
    async def run() -> None:
        eng = StubEngine()
        with started(eng) as t, client() as c:
            (port,) = [p for _, p in t.sockets]
            for d in (INIT, INIT_COOKIE, AUTH):
                c.sendto(d, ("127.0.0.1", port))
            await after_batches(t, lambda: len(eng.got) == 3, "the three datagrams, one per queue")
            assert sorted(d for d, _, _ in eng.got) == sorted([INIT, INIT_COOKIE, AUTH])
            assert {local for _, local, _ in eng.got} == {("127.0.0.1", port)}

    asyncio.run(run())


def test_the_port_is_still_not_shared() -> None:
    """A second daemon (which would join the SO_REUSEPORT group) and any other program fail to bind."""
    async def run() -> None:
        with started(StubEngine()) as t:
            (port,) = [p for _, p in t.sockets]
            second = UdpTransport(StubEngine(), ["127.0.0.1"], [port])  # type: ignore[arg-type]
            with pytest.raises(LocalError, match="in use"):
                second.start()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", port))

    asyncio.run(run())
