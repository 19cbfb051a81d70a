"""A cluster bus task ends when cancelled even where the Redis client catches the cancellation of a call
in progress and returns normally (seen with redis-py 8.2's Pipeline.execute): without that, stopping a
clustered mediation server while it publishes waits for ever."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from mediation_server.cluster.core import Cluster
from mediation_server.cluster.redis_bus import RedisBus, uncancelled


class SwallowingPipeline:
    """A pipeline whose execute() blocks until cancelled, then returns as if it had succeeded."""

    def __init__(self, started: asyncio.Event) -> None:
        self.started, self.calls = started, 0

    def publish(self, channel: str, data: bytes) -> None:
        self.calls += 1

    def evalsha(self, *args: Any) -> None:
        self.calls += 1

    async def execute(self) -> list[int]:
        self.started.set()
        with contextlib.suppress(asyncio.CancelledError):  # the library's behaviour this guards against
            await asyncio.Event().wait()
        return [1] * self.calls


class Client:
    def __init__(self, started: asyncio.Event) -> None:
        self.started = started

    def pipeline(self, transaction: bool) -> SwallowingPipeline:
        return SwallowingPipeline(self.started)


async def _swallowing(started: asyncio.Event) -> int:
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    return 7


async def _five() -> int:
    return 5


def test_uncancelled_raises_after_a_swallowed_cancel_and_passes_results_through() -> None:
    async def main() -> None:
        assert await uncancelled(_five()) == 5
        started = asyncio.Event()
        task = asyncio.create_task(uncancelled(_swallowing(started)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


def test_the_publisher_ends_when_cancelled_inside_a_swallowing_execute() -> None:
    async def main() -> None:
        cluster = Cluster("s1")
        bus = RedisBus("redis://unused", cluster, lambda d: None, lambda s: None, lambda s: None)
        started = asyncio.Event()
        cluster.hello()  # one message in the outbox
        bus._wake.set()
        task = asyncio.create_task(bus._publish(Client(started), "sha"))
        await started.wait()
        task.cancel()
        # the owner's cancel-then-gather (RedisBus.run's finally) returns: the task ended cancelled
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
        assert task.cancelled()

    asyncio.run(main())
