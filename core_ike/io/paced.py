"""A background refresh on the event loop: periodic, woken early on demand, and paced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import NoReturn


async def paced_loop(step: Callable[[], Awaitable[None]], interval: Callable[[], float], min_interval: float,
                     on_wake: Callable[[Callable[[], None]], None]) -> NoReturn:
    """Run ``step()`` every ``interval()`` seconds, and sooner when the function given to ``on_wake`` is
    called, but at most once every ``min_interval`` seconds: a stream of wake-ups (unknown peers looked
    up in a database) cannot keep what ``step`` reads busy."""
    wake = asyncio.Event()
    on_wake(wake.set)
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval())
        wake.clear()
        started = loop.time()
        await step()
        rest = min_interval - (loop.time() - started)
        if rest > 0:
            await asyncio.sleep(rest)  # pacing of the queries, not a synchronisation
