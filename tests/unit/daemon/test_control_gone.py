"""EngineControl's `down`/`rekey` wait (`_gone`): woken by the event that follows the SA's removal."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from core_ike.daemon.control import EngineControl
from core_ike.ike.engine import Engine


class _Engine:
    def __init__(self, sas: list[object]) -> None:
        self.sas = sas

    def ike_sas(self) -> list[object]:
        return self.sas


class _SeenEvent(asyncio.Event):
    """asyncio.Event that says when someone waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> bool:  # type: ignore[override]
        self.waited.set()
        return await super().wait()


def test_gone_wakes_on_the_event_after_removal() -> None:
    async def run() -> None:
        sa = object()
        engine = _Engine([sa])
        ctl = EngineControl(cast(Engine, engine), lambda: None)
        ctl.feed("an event before anyone waits")  # must not end a later wait early
        seen = ctl._changed = _SeenEvent()
        task = asyncio.ensure_future(ctl._gone([(cast(Any, sa), None)], 3600.0))
        await asyncio.wait_for(seen.waited.wait(), 30)
        assert not task.done() and ctl._gone_waiting == 1  # waiting: the SA is still there
        engine.sas.clear()
        ctl.feed("IkeSaDeleted")
        assert await asyncio.wait_for(task, 30) is True  # the event, never the hour's timeout
        assert ctl._gone_waiting == 0

    asyncio.run(run())
