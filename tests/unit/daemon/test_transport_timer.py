"""The transport's one timer (core_ike/io/transport.py _settle) on each event loop the daemons run on: the
engine's handle_timer is never called before the deadline it asked for, so each deadline costs one
call (uvloop's timers count whole milliseconds and would otherwise fire up to a millisecond early)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop

from core_ike.io.transport import UdpTransport


class _Timed:
    """Asks for one deadline after the other, `gaps` seconds from when it is asked; records each call."""

    natt_port = -1

    def __init__(self, gaps: list[float]) -> None:
        self.gaps = list(gaps)
        self.deadline: float | None = None
        self.calls: list[tuple[float, float]] = []  # (now, the deadline then)
        self.done = asyncio.Event()

    def receive(self, data: bytes, local: Any, remote: Any, now: float) -> None:
        return None

    def datagrams_to_send(self) -> list[Any]:
        return []

    def get_timer(self) -> float | None:
        if self.deadline is None and self.gaps:
            self.deadline = time.monotonic() + self.gaps.pop(0)
        return self.deadline

    def handle_timer(self, now: float) -> None:
        assert self.deadline is not None
        self.calls.append((now, self.deadline))
        if now >= self.deadline:
            self.deadline = None
            if not self.gaps:
                self.done.set()

    def next_event(self) -> Any:
        return None


GAPS = [0.0004, 0.0013, 0.002, 0.0005, 0.0031, 0.0001, 0.0009, 0.0017] * 3


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_timer_never_fires_before_the_deadline(loop: str) -> None:
    engine = _Timed(GAPS)

    async def run() -> None:
        t = UdpTransport(engine, ["127.0.0.1"], [0])  # type: ignore[arg-type]
        t.start()
        try:
            async with asyncio.timeout(30):
                await engine.done.wait()
        finally:
            t.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as r:
        r.run(run())
    early = [(now, at) for now, at in engine.calls if now < at]
    assert not early, f"{len(early)} of {len(engine.calls)} calls before the deadline"
    assert len(engine.calls) == len(GAPS)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_deadline_already_due_is_served_at_the_next_turn_of_the_loop(loop: str) -> None:
    """A deadline that has come when the timer is armed (a check list that decides after the datagrams read
    with its deadline's answer) is served at the next turn, not by a millisecond timer: counted in turns
    of a callback that re-schedules itself, not in time."""
    engine = _Timed([])
    turns: list[int] = []

    async def run() -> None:
        t = UdpTransport(engine, ["127.0.0.1"], [0])  # type: ignore[arg-type]
        t.start()
        loop_ = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # one turn of the loop: what start() scheduled runs first
            engine.deadline = time.monotonic() - 0.001  # due already
            t.flush()  # re-arms

            def count(n: int) -> None:
                if engine.calls:
                    turns.append(n)
                    engine.done.set()
                elif n < 10000:
                    loop_.call_soon(count, n + 1)

            loop_.call_soon(count, 0)
            async with asyncio.timeout(30):
                await engine.done.wait()
        finally:
            t.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as r:
        r.run(run())
    assert turns and turns[0] <= 3, turns
