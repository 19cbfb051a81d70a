"""Which of a datagram's events are handled before its replies leave (core_ike/io/transport.py `_answer`,
`before_send`): those the data plane glue must act on first (a CHILD_SA installed before the response
that completes it, RFC 7296 §1.3.1; core_ike/daemon/glue.py `precedes_send`), and only those: a reply
whose events install nothing leaves before their handlers run, so it does not wait for them. Events
queued after one that must come first are handled after the reply, in the engine's order."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from core_ike.daemon.glue import DataPlaneGlue
from core_ike.ike import events as ev
from core_ike.me import events as mev
from tests.unit.daemon.stubengine import Addr, StubEngine, client, started


def _queued(s: socket.socket) -> bool:
    try:
        s.recv(65535, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    return True


def _child() -> ev.ChildSaEstablished:
    keys = ev.ChildKeys(20, 128, 0, False, 0x1001, 0x2002, b"k" * 20, b"", b"K" * 20, b"")
    return ev.ChildSaEstablished(
        "peer",
        1,
        "net",
        2,
        1,
        ("127.0.0.1", 4500),
        ("127.0.0.2", 4500),
        True,
        ("10.1.0.0/24",),
        ("10.2.0.0/24",),
        keys,
        "AES_GCM_16_128",
    )


class _Answering(StubEngine):
    """Answers each datagram with one datagram and queues `events` with it."""

    def __init__(self, events: list[Any]) -> None:
        super().__init__()
        self.made = events
        self.events: list[Any] = []

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        super().receive(data, local, remote, now)
        self.out.append((b"reply", local, remote))
        self.events += self.made

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None


def _handled(events: list[Any], before_send: Any) -> list[tuple[str, bool]]:
    """Each event's type and whether the reply had arrived at the client when its handler ran."""
    seen: list[tuple[str, bool]] = []

    async def run() -> None:
        eng = _Answering(events)
        done = asyncio.Event()
        with started(eng) as t, client() as c:

            def handle(e: Any) -> None:
                seen.append((type(e).__name__, _queued(c)))
                if len(seen) == len(events):
                    done.set()

            t.before_send = before_send
            t.on_event = handle
            c.sendto(b"request", next(iter(t.sockets)))
            async with asyncio.timeout(10):
                await done.wait()
            assert _queued(c)

    asyncio.run(run())
    return seen


def test_events_the_glue_acts_on_come_before_the_reply_the_others_after() -> None:
    events = [
        ev.IkeSaEstablished(
            "peer", 1, ("127.0.0.1", 4500), ("127.0.0.2", 4500), "a@x", "b@x", b"i" * 8, b"r" * 8, False
        ),
        _child(),
        mev.MediatedEstablished("peer", "b@x", 1, ("127.0.0.1", 4500), ("127.0.0.2", 4500), 0.01),
    ]
    seen = _handled(events, DataPlaneGlue.precedes_send)
    # up to and including the CHILD_SA's installation before the reply left, the rest after it
    assert seen == [("IkeSaEstablished", False), ("ChildSaEstablished", False), ("MediatedEstablished", True)]


def test_a_reply_whose_events_install_nothing_leaves_first() -> None:
    events = [
        mev.MediationRequested("alice@med", "00" * 4, ()),
        mev.ChecksStarted("", "alice@med", "00" * 4, False, ()),
    ]
    seen = _handled(events, DataPlaneGlue.precedes_send)
    assert seen == [("MediationRequested", True), ("ChecksStarted", True)]


def test_by_default_every_event_comes_first() -> None:
    events = [mev.MediationRequested("alice@med", "00" * 4, ()), _child()]
    assert _handled(events, lambda e: True) == [("MediationRequested", False), ("ChildSaEstablished", False)]
