"""Helpers shared by the daemon log tests: the event loops the daemons run on, and the messages of a log file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

LOOPS = ["asyncio", "uvloop"]  # uvloop is a dependency (the daemons' default loop)


def run_in_loop(kind: str, coro_fn: Callable[[], object]) -> None:
    """Run `coro_fn()` on a fresh loop of `kind` (one of LOOPS)."""
    factory = None
    if kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro_fn())  # type: ignore[arg-type]


def log_lines(path: Path) -> list[str]:
    """The messages of a log file, without the date and time."""
    return [line.split(" ", 2)[2] for line in path.read_text().splitlines()]


async def next_turn() -> None:
    """Return in a later callback than the running one, after what this one scheduled with call_soon
    (FIFO), such as the handler's write of its lines."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned
