"""The SQL configuration as a live source: a snapshot of the rows, refreshed in a worker thread.

The event loop never waits for the database: lookups answer from the snapshot, which is read again
every `refresh_interval` seconds and at once when a connection attempt finds no config
(`Engine.config_miss`). The attempt then waits unanswered (CredentialsPending) and the peer's
retransmission (RFC 7296 2.1) meets the fresh snapshot, so rows added while the daemon runs are used
without a restart (docs/gateway.md, "Live changes").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine as SqlEngine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core_ike.errors import CredentialsPending, LocalError
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import Identity
from core_ike.io.paced import paced_loop

from .loader import Snapshot, load

log = logging.getLogger("gateway.sqlconf")


def open_config_db(url: str) -> SqlEngine:
    """An engine for `url` (sqlite:////PATH, postgresql://..., mysql://...); the tables must exist
    (strongSwan's schema; `ikectl`-less setups create them with gateway.sqlconf.models.Base)."""
    from med_db.engine import make_engine

    try:
        return make_engine(url)
    except (SQLAlchemyError, ValueError, ImportError) as e:
        raise LocalError(f"[daemon] config_db: cannot open {url.split('@')[-1]}: {e}") from None


def merge_creds(base: Credentials, extra: Credentials) -> Credentials:
    """The file's credentials and the database's together (the file's PSKs are found first)."""
    return Credentials(shared=[*base.shared, *extra.shared], private_keys=[*base.private_keys, *extra.private_keys],
                       public_keys={**extra.public_keys, **base.public_keys}, raw_keys=[*base.raw_keys, *extra.raw_keys],
                       cas=[*base.cas, *extra.cas], resolver=base.resolver, eap=[*base.eap, *extra.eap])


class SqlConfigSource:
    def __init__(self, db: SqlEngine, refresh_interval: float = 2.0) -> None:
        self.db = db
        self.refresh_interval = refresh_interval
        self.snapshot = Snapshot([], Credentials())
        self.generation = 0  # snapshots read so far
        self._asked: dict[Identity | None, int] = {}  # a miss -> the generation current when it happened
        self._wake: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.on_snapshot: Callable[[Snapshot], None] | None = None  # the daemon applies it (event loop)

    def read(self) -> Snapshot:
        """Query every table (blocking: a worker thread, or start-up)."""
        with Session(self.db) as s:
            snap = load(s)
        with self._lock:
            self.snapshot = snap
            self.generation += 1
        return snap

    def miss(self, peer: Identity | None) -> None:
        """Engine.config_miss: the first miss of a peer wakes the refresher and waits for it; so does a
        miss while the refresh that was running at the first one completes (it may predate the row).
        After that the miss is definite."""
        if self._wake is None:
            return
        asked = self._asked.get(peer)
        if asked is None:
            if len(self._asked) > 10000:
                self._asked.clear()
            self._asked[peer] = self.generation
            self._wake()
            raise CredentialsPending(f"looking up {peer or 'the addresses'} in the configuration database")
        if self.generation - asked < 2:
            self._wake()
            raise CredentialsPending(f"looking up {peer or 'the addresses'} in the configuration database")
        self._asked.pop(peer, None)

    async def refresh_loop(self, min_interval: float = 0.25) -> None:
        """Every `refresh_interval` seconds and after a miss (at most every `min_interval` seconds, so
        unknown peers cannot keep the database busy); queries in a worker thread."""
        async def step() -> None:
            try:
                snap = await asyncio.to_thread(self.read)
            except (SQLAlchemyError, LocalError) as e:
                log.warning("reading the configuration database failed, keeping the last one: %s", e)
                self.generation += 1  # a miss waits for attempts, not for a database that is down
            else:
                if self.on_snapshot is not None:
                    self.on_snapshot(snap)

        def set_wake(wake: Callable[[], None]) -> None:
            self._wake = wake

        await paced_loop(step, lambda: self.refresh_interval, min_interval, set_wake)
