"""The engine's answers to a datagram leave as soon as the engine made them, before the transport reads
the next datagram of the same wake-up (core_ike/io/transport.py _readable, _answer): every answer
arrives, in order, whatever its size and whichever local address it leaves from."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.daemon.flushwait import datagrams
from tests.unit.daemon.stubengine import Addr, StubEngine, client, count_batches, started


class _Echo(StubEngine):
    """Answers every datagram with `scale` copies of it, from the address it came to (or `other`), and
    notes how many answers the transport had sent when each datagram arrived."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.other: Addr | None = None
        self.transport: Any = None
        self.sent_before: list[int] = []
        self.batches = 0

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        super().receive(data, local, remote, now)
        self.sent_before.append(self.transport.stats["tx"])
        src = self.other if self.other is not None and len(self.got) % 2 == 0 else local
        self.out.append((data * self.scale, src, remote))


def _run(engine: _Echo, count: int, two: bool = False) -> tuple[list[bytes], int, dict[str, int]]:
    """`count` datagrams queued at once to a transport on 127.0.0.1 (`two`: also on 127.0.0.2, which
    answers every second one); the answers, the number of read batches that delivered them, the
    transport's counters."""
    async def run() -> tuple[list[bytes], int, dict[str, int]]:
        with started(engine, ["127.0.0.1", "127.0.0.2"] if two else ["127.0.0.1"]) as t, client() as c:
            engine.transport = t
            addr, *rest = t.sockets
            if rest:
                engine.other = rest[0]
            batches = count_batches(t)
            for i in range(count):  # all queued before the loop runs the transport's reader
                c.sendto(b"%04d" % i, addr)
            got = await datagrams(c, count)
            return got, batches[0], dict(t.stats)

    return asyncio.run(run())


def test_each_answer_leaves_before_the_next_datagram_is_read() -> None:
    eng = _Echo()
    got, batches, stats = _run(eng, 20)
    assert got == [b"%04d" % i for i in range(20)]
    assert batches == 1  # one wake-up read all 20
    assert eng.sent_before == list(range(20)) and stats["tx"] == 20 and stats["dropped"] == 0


def test_large_answers_too() -> None:
    eng = _Echo(scale=2000)  # 8000 octets each: IP fragments
    got, _, stats = _run(eng, 5)
    assert got == [b"%04d" % i * 2000 for i in range(5)]
    assert eng.sent_before == list(range(5)) and stats["tx"] == 5


def test_answers_from_two_addresses() -> None:
    eng = _Echo()
    got, _, stats = _run(eng, 6, two=True)
    assert sorted(got) == [b"%04d" % i for i in range(6)] and stats["tx"] == 6
    assert eng.sent_before == list(range(6))
