"""The engine's work done ahead (Engine.prepare, e.g. the next KEr key pairs) runs after the answers of a
wake-up left (core_ike/io/transport.py flush), so no answer waits for it; a failure there loses nothing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from core_ike.io.transport import UdpTransport
from tests.unit.daemon.flushwait import datagrams
from tests.unit.daemon.test_transport_replies import _Echo


class _Preparing(_Echo):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.sent_at_prepare: list[int] = []
        self.transport: UdpTransport | None = None
        self.fail = fail

    def prepare(self) -> None:
        assert self.transport is not None
        self.sent_at_prepare.append(self.transport.stats["tx"])
        if self.fail:
            raise RuntimeError("broken")


def _run(engine: _Preparing, count: int) -> list[bytes]:
    async def run() -> list[bytes]:
        t = UdpTransport(engine, ["127.0.0.1"], [0])  # type: ignore[arg-type]
        engine.transport = t
        t.start()
        (addr,) = t.sockets
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setblocking(False)
        try:
            for i in range(count):
                c.sendto(b"%04d" % i, addr)
                await asyncio.sleep(0)
            return await datagrams(c, count)
        finally:
            c.close()
            t.close()

    return asyncio.run(run())


def test_prepare_runs_after_the_answers_left() -> None:
    e = _Preparing()
    got = _run(e, 5)
    assert got == [b"%04d" % i for i in range(5)]
    assert e.sent_at_prepare[0] == 0  # at start, before any datagram
    # after each wake-up every answer it produced was already sent: the counts only grow, up to all 5
    assert e.sent_at_prepare == sorted(e.sent_at_prepare) and e.sent_at_prepare[-1] == 5


def test_a_failing_prepare_loses_no_answer(caplog: Any) -> None:
    e = _Preparing(fail=True)
    assert _run(e, 3) == [b"0000", b"0001", b"0002"]
    assert "preparing the engine's next work" in caplog.text
