"""`up` (core_ike/daemon/control.py) of a CHILD_SA whose CREATE_CHILD_SA is in flight when the IKE_SA
ends: the reply says why at once (the IKE_SA's end tells the task, ChildSaFailed), not after the `up`'s
own timeout. Two real engines back to back (tests/unit/ike/ike_pair.py), the daemon's EngineControl fed
with side a's events as the runtime feeds it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from core_ike.daemon.control import EngineControl
from core_ike.ike.sa import IkeState
from tests.unit.ike.ike_pair import Pair, make_pair


async def _one_turn() -> None:
    """Let the callbacks already scheduled run (one turn of the loop)."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[None] = loop.create_future()
    loop.call_soon(seen.set_result, None)
    await seen


def _feed(p: Pair, ctl: EngineControl) -> None:
    p.pump()
    for e in p.events_a:
        ctl.feed(e)
    p.events_a.clear()


async def _up_while(end: str) -> dict[str, Any]:
    p = make_pair()
    p.now = time.monotonic()  # EngineControl initiates at the monotonic clock
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    p.events_a.clear()
    ctl = EngineControl(p.a, lambda: None)
    p.drop = lambda side, data: side == "a->b"  # the CREATE_CHILD_SA stays unanswered
    task = asyncio.ensure_future(ctl.handle({"cmd": "up", "conn": "home", "child": "net", "timeout": 3600}))
    while sa.outstanding is None:
        await _one_turn()
    _feed(p, ctl)
    p.drop = None
    if end == "peer-delete":
        p.b.terminate(p.b.ike_sas()[0], now=p.now)
    else:  # the peer restarted: it answers the retransmitted CREATE_CHILD_SA with INVALID_IKE_SPI
        p.b = make_pair().b
        p.advance(10.0)  # the first retransmission (RFC 7296 2.1)
    _feed(p, ctl)
    await _one_turn()
    assert task.done(), "the `up` still waits after the IKE_SA ended"
    return task.result()


def test_up_answered_when_the_peer_deletes_the_ike_sa() -> None:
    reply = asyncio.run(_up_while("peer-delete"))
    assert reply == {"ok": False, "conn": "home", "error": "CHILD_SA 'net' failed: deleted by peer"}


def test_up_answered_when_the_peer_restarted() -> None:
    reply = asyncio.run(_up_while("restart"))
    assert reply["ok"] is False and "INVALID_IKE_SPI" in reply["error"], reply
