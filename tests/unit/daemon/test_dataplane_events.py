"""The daemon acts on the data plane's events (RFC 7296 2.8): a soft lifetime rekeys the CHILD_SA, a
hard one deletes it; an acquire goes to `on_acquire` (the trap policies act on it,
core_ike/daemon/traps.py)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace
from typing import Any

from core_ike.daemon.runtime import Daemon
from core_ike.io.dataplane import Acquire, Direction, SaExpired


def test_expiry_events_rekey_or_delete() -> None:
    calls: list[tuple[str, Any, int]] = []
    child = SimpleNamespace(name="net", spi_in=0x1111, spi_out=0x2222, state="INSTALLED")
    sa = SimpleNamespace(children={7: child})
    events = deque([SaExpired(0x2222, Direction.OUT, 1, False, "sequence"),
                    SaExpired(0x1111, Direction.IN, 1, True, "bytes"),
                    SaExpired(0x9999, Direction.IN, 1, True, "bytes"),  # unknown SPI: nothing to do
                    Acquire(1, "10.1.0.2", "10.2.0.2", 1)])
    engine = SimpleNamespace(
        ike_sas=lambda: [sa],
        rekey_child=lambda s, uid, now: calls.append(("rekey", s, uid)),
        terminate_child=lambda s, uid, now: calls.append(("delete", s, uid)),
    )
    flushed: list[bool] = []
    fake: Any = SimpleNamespace(dp=SimpleNamespace(next_event=lambda: events.popleft() if events else None),
                                engine=engine, transport=SimpleNamespace(flush=lambda: flushed.append(True)))
    fake._child_by_spi = lambda spi: Daemon._child_by_spi(fake, spi)
    acquired: list[Acquire] = []
    fake.on_acquire = lambda e, now: acquired.append(e)
    Daemon._dataplane_events(fake)
    assert calls == [("rekey", sa, 7), ("delete", sa, 7)]
    assert acquired == [Acquire(1, "10.1.0.2", "10.2.0.2", 1)]
    assert not events and flushed
