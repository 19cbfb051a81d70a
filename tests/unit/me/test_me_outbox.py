"""MeOutbox.inside: requests made inside an SA's task manager are queued, not started, until the outermost
block on that SA ends (nested blocks, an exception)."""

from __future__ import annotations

from typing import Any

import pytest

from core_ike.ike.state import IkeState
from core_ike.me.tasks import MeConnectRequest, MeOutbox


class FakeSa:
    def __init__(self, uid: int) -> None:
        self.unique_id = uid
        self.state = IkeState.ESTABLISHED
        self.queue: list[Any] = []
        self.started = 0

    def initiate_next(self, now: float) -> None:
        self.started += 1


def _req() -> MeConnectRequest:
    return MeConnectRequest(lambda sa, now: [])


def test_inside_queues_until_the_outermost_block_ends() -> None:
    ob, sa, other = MeOutbox(), FakeSa(1), FakeSa(2)
    with ob.inside(sa):  # type: ignore[arg-type]
        with ob.inside(sa):  # type: ignore[arg-type]
            ob.send(sa, _req(), 0.0)  # type: ignore[arg-type]
        ob.send(other, _req(), 0.0)  # type: ignore[arg-type]  # another SA is not inside: started
        assert (len(sa.queue), sa.started, other.started) == (1, 0, 1)
    first = sa.queue[0]
    ob.finished(sa, first, 0.0)  # type: ignore[arg-type]
    ob.send(sa, _req(), 0.0)  # type: ignore[arg-type]  # outside now: started at once
    assert sa.started == 1


def test_inside_ends_on_an_exception() -> None:
    ob, sa = MeOutbox(), FakeSa(1)
    with pytest.raises(ValueError), ob.inside(sa):  # type: ignore[arg-type]
        raise ValueError
    ob.send(sa, _req(), 0.0)  # type: ignore[arg-type]
    assert sa.started == 1
