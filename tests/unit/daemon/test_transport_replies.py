"""The engine's answers to one receive batch leave with one sendmmsg when there are more than
SENDTO_MAX of them, one sendto each otherwise (core_ike/io/transport.py _send_batch): every answer
arrives, in order, whatever its size; answers from another local address than the first one's go one
by one."""

from __future__ import annotations

import asyncio
from typing import Any

from core_ike.io.transport import SENDTO_MAX
from tests.unit.daemon.flushwait import datagrams
from tests.unit.daemon.stubengine import Addr, StubEngine, client, started


class _Echo(StubEngine):
    """Answers every datagram with `scale` copies of it, from the address it came to (or `other`)."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.other: Addr | None = None

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        super().receive(data, local, remote, now)
        src = self.other if self.other is not None and len(self.got) % 2 == 0 else local
        self.out.append((data * self.scale, src, remote))


def _run(engine: _Echo, count: int, two: bool = False) -> tuple[list[bytes], int, dict[str, int]]:
    """`count` datagrams queued at once to a transport on 127.0.0.1 (`two`: also on 127.0.0.2, which
    answers every second one); the answers, the number of sendmmsg flushes of the reply batch, the
    transport's counters."""
    async def run() -> tuple[list[bytes], int, dict[str, int]]:
        with started(engine, ["127.0.0.1", "127.0.0.2"] if two else ["127.0.0.1"]) as t, client() as c:
            addr, *rest = t.sockets
            if rest:
                engine.other = rest[0]
            flushes = [0]
            flush = t._replies.flush

            def counted(sock: Any) -> int:
                flushes[0] += 1
                return flush(sock)

            t._replies.flush = counted  # type: ignore[method-assign]
            for i in range(count):  # all queued before the loop runs the transport's reader
                c.sendto(b"%04d" % i, addr)
            got = await datagrams(c, count)
            return got, flushes[0], dict(t.stats)

    return asyncio.run(run())


def test_answers_to_one_batch_leave_together_in_order() -> None:
    got, flushes, stats = _run(_Echo(), 20)
    assert got == [b"%04d" % i for i in range(20)]
    assert flushes >= 1 and stats["tx"] == 20 and stats["dropped"] == 0


def test_large_answers_too() -> None:
    got, _, stats = _run(_Echo(scale=2000), 5)  # 8000 octets each: IP fragments
    assert got == [b"%04d" % i * 2000 for i in range(5)]
    assert stats["tx"] == 5


def test_answers_from_two_addresses_go_one_by_one() -> None:
    got, flushes, stats = _run(_Echo(), 6, two=True)
    assert sorted(got) == [b"%04d" % i for i in range(6)] and flushes == 0 and stats["tx"] == 6


def test_a_few_answers_leave_one_sendto_each() -> None:
    got, flushes, stats = _run(_Echo(), SENDTO_MAX)  # queued at once: one receive batch
    assert got == [b"%04d" % i for i in range(SENDTO_MAX)]
    assert flushes == 0 and stats["tx"] == SENDTO_MAX
