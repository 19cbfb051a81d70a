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


def test_gone_wakes_on_the_event_after_removal() -> None:
    async def run() -> None:
        sa = object()
        engine = _Engine([sa])
        ctl = EngineControl(cast(Engine, engine), lambda: None)
        ctl.feed("an event before anyone waits")  # must not end a later wait early
        task = asyncio.ensure_future(ctl._gone([(cast(Any, sa), None)], 3600.0))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()  # the SA is still there
        engine.sas.clear()
        ctl.feed("IkeSaDeleted")
        for _ in range(50):  # a few loop turns, never the hour's timeout
            if task.done():
                break
            await asyncio.sleep(0)
        assert task.done() and task.result() is True
        assert ctl._gone_waiting == 0

    asyncio.run(run())
