"""The NAT-T port's reader (core_ike/io/fastpath.py UdpEspIo._readable) ends a wake-up that brought one
IKE message alone by asking FIONREAD, not by a read failing with EAGAIN (as UdpTransport does): one read
for that message; IKE messages queued together, and ESP after an IKE message, are still read in the same
wake-up, each delivered once and in order (RFC 3948 2.2: the non-ESP marker tells them apart). Loopback
UDP queues a datagram inside the sender's send(), so each test's datagrams wait in the socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from core_ike.io.fastpath import UdpEspIo, enable_gro

Addr = tuple[str, int]
MARKER = bytes(4)  # RFC 3948 2.2


class CountingSocket(socket.socket):
    """A real UDP socket that counts its read calls and the reads that found nothing."""

    reads = 0
    empty = 0

    def _count(self, read: Any, *args: Any) -> Any:
        self.reads += 1
        try:
            return read(*args)
        except BlockingIOError:
            self.empty += 1
            raise

    def recvfrom(self, *args: Any) -> Any:
        return self._count(super().recvfrom, *args)

    def recvmsg_into(self, *args: Any) -> Any:  # the UDP_GRO reads (users' default steps)
        return self._count(super().recvmsg_into, *args)


class Transport:
    """What UdpEspIo asks of the transport on the receiving side."""

    def __init__(self) -> None:
        self.stats = {"rx": 0, "esp": 0}
        self.delivered: list[bytes] = []
        self.flushes = 0

    def deliver_read(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        self.delivered.append(data)

    def flush(self) -> None:
        self.flushes += 1


@contextmanager
def natt_pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    s = CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        c.connect(s.getsockname())
        yield s, c
    finally:
        s.close()
        c.close()


def reader(esp: list[list[tuple[bytes, Addr]]], s: socket.socket, gro: bool) -> tuple[UdpEspIo, Transport]:
    """The NAT-T reader of `s`: plain reads, or UDP_GRO reads whose runs the batch steps may take whole."""
    tr = Transport()
    io = UdpEspIo(tr, 4500, frozenset({"gro"} if gro else ()), esp.append, clock=lambda: 0.0)
    if gro:
        assert enable_gro(s)
        io._gro_on.add(s.fileno())
        io.on_run = lambda *a: False  # a run not taken: split as without it
    return io, tr


@pytest.mark.parametrize("gro", [False, True])
def test_one_ike_message_alone_is_one_read(gro: bool) -> None:
    esp: list[list[tuple[bytes, Addr]]] = []
    with natt_pair() as (s, c):
        io, tr = reader(esp, s, gro)
        c.send(MARKER + b"IKE_SA_INIT")
        io._readable(s, s.getsockname())
        assert tr.delivered == [MARKER + b"IKE_SA_INIT"]  # the transport takes the marker off
        assert (s.reads, s.empty) == (1, 0)  # no read that fails with EAGAIN
        assert tr.stats["rx"] == 1 and tr.flushes == 1 and not esp


@pytest.mark.parametrize("gro", [False, True])
def test_queued_messages_and_esp_after_ike_in_one_wake_up(gro: bool) -> None:
    esp: list[list[tuple[bytes, Addr]]] = []
    with natt_pair() as (s, c):
        io, tr = reader(esp, s, gro)
        for m in (MARKER + b"one", MARKER + b"two", b"\x00\x00\x10\x01esp-packet"):
            c.send(m)
        io._readable(s, s.getsockname())
        assert tr.delivered == [MARKER + b"one", MARKER + b"two"]
        assert [[d for d, _ in batch] for batch in esp] == [[b"\x00\x00\x10\x01esp-packet"]]
        assert s.reads == 4 and s.empty == 1  # three datagrams, then the end of the queue
        assert tr.stats["rx"] == 3 and tr.stats["esp"] == 1
        # the data plane's batching figures: one wake-up, one ESP datagram (the IKE messages not counted)
        assert (io.counters()["esp_rx_wakeups"], io.counters()["esp_datagrams_in"]) == (1, 1)


@pytest.mark.parametrize("gro", [False, True])
def test_esp_first_reads_to_the_end_of_the_queue(gro: bool) -> None:
    esp: list[list[tuple[bytes, Addr]]] = []
    with natt_pair() as (s, c):
        io, _tr = reader(esp, s, gro)
        c.send(b"\x00\x00\x10\x01esp")
        io._readable(s, s.getsockname())
        assert [[d for d, _ in batch] for batch in esp] == [[b"\x00\x00\x10\x01esp"]]
        assert (s.reads, s.empty) == (2, 1)  # ESP is not asked about: a busy tunnel reads on
        c.send(b"\x00\x00\x10\x01esp2")
        c.send(b"\x00\x00\x10\x01esp3")
        io._readable(s, s.getsockname())
        assert (io.counters()["esp_rx_wakeups"], io.counters()["esp_datagrams_in"]) == (2, 3)
