"""The transport learns that a socket's queue is empty from FIONREAD, not from a recvfrom failing with
EAGAIN (core_ike/io/transport.py _readable): datagrams queued together still reach the engine in one read
batch, in order, each with its source; an empty datagram (FIONREAD answers 0 for it as for an empty queue)
stops the batch without losing it or what follows it, on the IKE port and on the NAT-T port (RFC 3948 2.2);
a wake-up that finds nothing reads nothing."""

from __future__ import annotations

import asyncio

from tests.unit.daemon.flushwait import after_batches, datagrams
from tests.unit.daemon.stubengine import Addr, StubEngine, client, count_batches, started


class _Echo(StubEngine):
    """Answers every datagram with its octets reversed."""

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        super().receive(data, local, remote, now)
        self.out.append((data[::-1] or b"-", local, remote))


def test_queued_datagrams_in_one_batch_in_order() -> None:
    eng = _Echo()

    async def run() -> tuple[list[bytes], int]:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            batches = count_batches(t)
            for i in range(7):
                c.sendto(b"m%d" % i, addr)
            got = await datagrams(c, 7)
            assert [r for _, _, r in eng.got] == [c.getsockname()[:2]] * 7
            return got, batches[0]

    got, batches = asyncio.run(run())
    assert got == [b"0m", b"1m", b"2m", b"3m", b"4m", b"5m", b"6m"]
    assert batches == 1


def test_an_empty_datagram_loses_nothing() -> None:
    eng = _Echo()

    async def run() -> list[bytes]:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            for m in (b"one", b"", b"two", b"", b"", b"three"):
                c.sendto(m, addr)
            got = await datagrams(c, 6)
            assert t.stats["rx"] == 6 and t.stats["tx"] == 6
            return got

    assert asyncio.run(run()) == [b"eno", b"-", b"owt", b"-", b"-", b"eerht"]
    assert [d for d, _, _ in eng.got] == [b"one", b"", b"two", b"", b"", b"three"]


def test_natt_port_after_an_empty_datagram() -> None:
    eng = _Echo()

    async def run() -> None:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            eng.natt_port = addr[1]
            c.sendto(b"", addr)  # too short for RFC 3948: dropped
            c.sendto(b"\xff", addr)  # RFC 3948 2.3: a NAT keepalive
            c.sendto(bytes(4) + b"ike", addr)  # RFC 3948 2.2: the non-ESP marker
            await after_batches(t, lambda: eng.got, "the IKE message")
            assert [d for d, _, _ in eng.got] == [b"ike"] and t.stats["keepalive"] == 1
            assert await datagrams(c, 1) == [b"eki"]  # the answer without a marker: the stub adds none
            assert t.stats["rx"] == 3 and t.stats["dropped"] == 1

    asyncio.run(run())


def test_a_wake_up_without_a_datagram_reads_nothing() -> None:
    eng = _Echo()

    async def run() -> None:
        with started(eng) as t:
            (addr,) = t.sockets
            t._readable(t.sockets[addr], addr)  # no datagram queued: recvfrom fails with EAGAIN, caught
            assert t.stats["rx"] == 0 and eng.got == []

    asyncio.run(run())


def test_natt_marker_only_within_the_datagram() -> None:
    """The read buffer still holds the previous datagram's octets: a datagram shorter than the non-ESP
    marker that matches its first octets is not IKE (RFC 3948 2.2), whatever came before it."""
    eng = _Echo()

    async def run() -> None:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            eng.natt_port = addr[1]
            c.sendto(bytes(4) + b"first", addr)
            c.sendto(b"\0\0\0", addr)  # the marker's first three octets only: malformed, dropped
            c.sendto(bytes(4) + b"2", addr)
            await after_batches(t, lambda: len(eng.got) == 2, "both IKE messages")
            assert [d for d, _, _ in eng.got] == [b"first", b"2"]
            assert t.stats["rx"] == 3 and t.stats["dropped"] == 1
            assert await datagrams(c, 2) == [b"tsrif", b"2"]

    asyncio.run(run())


class _Fails(_Echo):
    """Fails on every datagram that starts with `bad`."""

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        if data.startswith(b"bad"):
            raise RuntimeError("engine bug")
        super().receive(data, local, remote, now)


def test_an_engine_error_loses_that_datagram_only() -> None:
    eng = _Fails()

    async def run() -> list[bytes]:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            for m in (b"bad one", b"good", b"bad two", b"also good"):
                c.sendto(m, addr)
            got = await datagrams(c, 2)
            assert t.stats["dropped"] == 2 and t.stats["rx"] == 4 and t.stats["tx"] == 2
            return got

    assert asyncio.run(run()) == [b"doog", b"doog osla"]
