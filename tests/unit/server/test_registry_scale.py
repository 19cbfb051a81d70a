"""Registry work per operation does not grow with the number of peers: the store sees one change per
callback added, drained or expired (counted, not timed), and a med_db flush issues a fixed number of
SQL statements whatever the number of stored registrations."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from med_db.engine import create_all, make_engine, make_session_factory
from med_db.models import MeCallback
from mediation_server.db import DbCallbackStore
from mediation_server.registry import MemoryStore, Registry, RegistryConfig


def _store_writes_per_operation(n: int) -> list[int]:
    """n peers online, each waiting for an offline one; then one add, one drain, one expiry."""
    store = MemoryStore()
    reg = Registry(RegistryConfig(callback_ttl=100.0, max_pending_callbacks=4), store=store)
    for i in range(n):
        reg.update_sa_id(f"p{i}", i, 0.0)
        reg.check_and_register(f"off{i}", f"p{i}", 0.0)
    counts = []
    before = store.writes
    reg.check_and_register("late", "p0", 1.0)  # add
    counts.append(store.writes - before)
    before = store.writes
    assert len(reg.update_sa_id("late", "late-sa", 2.0).callbacks) == 1  # drain
    counts.append(store.writes - before)
    before = store.writes
    reg.update_sa_id("lonely", "lonely-sa", 50.0)
    reg.check_and_register("never", "lonely", 50.0)
    counts.append(store.writes - before)
    before = store.writes
    assert len(reg.handle_timer(100.5)) == n  # the n registered at t=0 expire together
    counts.append((store.writes - before) // n)
    assert len(store.saved) == 1
    return counts


def test_store_writes_per_registry_operation_are_flat() -> None:
    small, large = _store_writes_per_operation(1_000), _store_writes_per_operation(100_000)
    assert small == large == [1, 1, 1, 1]


def _statements_per_flush(tmp_path: Path, n: int) -> int:
    engine = make_engine(f"sqlite:///{tmp_path / f'med{n}.sqlite'}")
    create_all(engine)
    sessions = make_session_factory(engine)
    expires = dt.datetime.fromtimestamp(time.time() + 600, dt.UTC).replace(tzinfo=None)
    with sessions.begin() as s:
        s.execute(insert(MeCallback), [
            {"requester_id_type": 11, "requester_id": f"r{i}@m".encode(), "target_id_type": 11,
             "target_id": f"t{i}@m".encode(), "expires": expires}
            for i in range(n)])
    store = DbCallbackStore(sessions)
    reg = Registry(RegistryConfig(), store=store)
    assert len(reg.registrations()) == n
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    now = time.time()
    reg.update_sa_id("alice@m", 1, now)
    reg.check_and_register("bob@m", "alice@m", now)  # a put, flushed at once (no flush loop)
    reg.update_sa_id("bob@m", 2, now)  # a drop
    event.remove(engine, "before_cursor_execute", count)
    return len([s for s in statements if s.split()[0].upper() in ("INSERT", "DELETE", "UPDATE")])


def test_db_flush_writes_only_the_changed_rows(tmp_path: Path) -> None:
    assert _statements_per_flush(tmp_path, 1_000) == _statements_per_flush(tmp_path, 20_000) == 3
