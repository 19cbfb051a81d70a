"""The mediation server's view of med_db: peers registered in the portal authenticate by their RSA/EC
public key under their ID_KEY_ID; callback registrations persist in `me_callback`; the optional
`mediation_grant` table and the peers' owners drive the authorization policies.

A peer registered in the portal can connect without a restart: the server keeps a snapshot of the peers
and grants, refreshed off the event loop (`PortalPeers`), so no lookup inside the engine waits for SQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core_ike.constants import IdType
from core_ike.errors import CredentialsPending, LocalError
from core_ike.ike.creds import PublicKey, load_public_key
from core_ike.ike.identity import Identity
from core_ike.io.paced import paced_loop
from med_db.engine import DatabaseError, make_session_factory, open_database
from med_db.models import MeCallback, MediationGrant, Peer, User

from .registry import CallbackRegistration

log = logging.getLogger("mediation_server.db")


def open_sessions(url: str) -> sessionmaker[Session]:
    """The server's med_db: missing tables are created as the portal creates them, so the server may
    start first; a database that cannot be opened or reached stops the start with one line."""
    try:
        return make_session_factory(open_database(url))
    except DatabaseError as e:
        raise LocalError(f"[mediation] database: {e}") from None


def checked(start: Callable[[], None]) -> None:
    """Run a start-up step against the database; a failure stops the start with one line."""
    try:
        start()
    except SQLAlchemyError as e:
        raise LocalError(f"[mediation] database: {e}") from None


def open_portal(url: str) -> tuple[PortalPeers, DbCallbackStore]:
    """The server's med_db side: the peers' first snapshot (before the engine runs; later ones are
    refreshed off the event loop) and the callback store."""
    sessions = open_sessions(url)
    portal = PortalPeers(sessions)
    checked(portal.refresh)
    return portal, DbCallbackStore(sessions)


def _keyid(identity: str) -> bytes | None:
    try:
        i = Identity.parse(identity)
    except Exception:  # noqa: BLE001 - not a parseable identity, so not a portal peer
        return None
    return i.data if i.id_type == IdType.KEY_ID else None


@dataclass(frozen=True)
class PortalPeer:
    id: int
    user_id: int
    alias: str
    keyid: bytes
    public_key: bytes  # SubjectPublicKeyInfo DER, loaded when it is first used


class PortalPeers:
    """The peers of med_db and their grants, as a snapshot in memory.

    The lookups (`public_key`, `owner_of`, `alias_of`, `granted`) run inside the engine, on the event
    loop, and never query the database: a slow query would stall every IKE_SA. `refresh()` does the
    queries; the daemon runs it in a worker thread (`asyncio.to_thread`) every `refresh_interval`
    seconds and at once when a lookup misses (`on_miss`), so a peer registered in the portal can
    connect within about one round of that without a restart. A refresh reads only the rows changed
    since the last one (the `updated` column) and reloads everything when rows were deleted.
    """

    def __init__(self, sessions: sessionmaker[Session], refresh_interval: float = 2.0) -> None:
        self.sessions = sessions
        self.refresh_interval = refresh_interval
        self.on_miss: Callable[[], None] | None = None  # the daemon wakes its refresher
        self._lock = threading.Lock()  # refresh() runs in a worker thread
        self._by_id: dict[int, PortalPeer] = {}
        self._by_keyid: dict[bytes, PortalPeer] = {}
        self._grants: dict[int, frozenset[int]] = {}  # peer id -> its grant rows' targets (self row included)
        self._grants_mark: tuple[object, ...] | None = None
        self._since: dt.datetime | None = None  # the newest `updated` seen
        self._keys: dict[bytes, PublicKey | None] = {}  # loaded public keys by key id (parsed once)
        self._generation = 0  # refreshes done
        self._asked: dict[bytes, int] = {}  # key ids missed -> the generation when first missed

    # ------------------------------------------------------------------ the database side (worker thread)
    def refresh(self) -> None:
        """Bring the snapshot up to date (blocking SQL: call it off the event loop)."""
        with self.sessions() as s:
            # the peers of a disabled account are left out: they no longer authenticate
            enabled = (Peer.user_id == User.id, User.disabled.is_(False))
            q = select(Peer.id, Peer.user_id, Peer.alias, Peer.keyid, Peer.public_key, Peer.updated).where(*enabled)
            rows = s.execute(q if self._since is None else q.where(Peer.updated >= self._since)).all()
            count, id_sum = s.execute(select(func.count(Peer.id), func.coalesce(func.sum(Peer.id), 0))
                                      .where(*enabled)).one()
            ids = set(self._by_id) | {r.id for r in rows}
            full = self._since is None or len(ids) != count or sum(ids) != id_sum
            if full and self._since is not None:
                rows = s.execute(q).all()  # rows were deleted: start over
            mark = tuple(s.execute(select(func.count(), func.max(MediationGrant.created))).one())
            grants: dict[int, set[int]] | None = None
            if mark != self._grants_mark:
                grants = {}
                for peer_id, target_id in s.execute(select(MediationGrant.peer_id, MediationGrant.target_id)):
                    grants.setdefault(peer_id, set()).add(target_id)
        with self._lock:
            by_id = {} if full else dict(self._by_id)
            for r in rows:
                by_id[r.id] = PortalPeer(r.id, r.user_id, r.alias, bytes(r.keyid), bytes(r.public_key))
                if self._since is None or r.updated > self._since:
                    self._since = r.updated
            changed = {bytes(r.keyid) for r in rows}
            self._by_id = by_id
            self._by_keyid = {p.keyid: p for p in by_id.values()}  # a replaced key id no longer answers
            self._keys = {k: v for k, v in self._keys.items() if k in self._by_keyid and k not in changed}
            if grants is not None:
                self._grants = {k: frozenset(v) for k, v in grants.items()}
                self._grants_mark = mark
            self._generation += 1

    async def refresh_loop(self, min_interval: float = 0.25) -> None:
        """Keep the snapshot fresh: every `refresh_interval` seconds, and after a lookup missed (at most
        every `min_interval` seconds, so unknown identities cannot keep the database busy). The queries
        run in a worker thread; the event loop never waits for them."""
        async def step() -> None:
            try:
                await asyncio.to_thread(self.refresh)
            except SQLAlchemyError as e:
                log.warning("refreshing the peers from the database failed: %s", e)

        def set_wake(wake: Callable[[], None]) -> None:
            self.on_miss = wake

        await paced_loop(step, lambda: self.refresh_interval, min_interval, set_wake)

    # ------------------------------------------------------------------ lookups (event loop, no SQL)
    def _peer(self, keyid: bytes) -> PortalPeer | None:
        peer = self._by_keyid.get(keyid)
        if peer is None and self.on_miss is not None:
            self.on_miss()
        return peer

    def public_key(self, ident: Identity) -> PublicKey | None:
        """Credentials.resolver hook: the registered key of an ID_KEY_ID identity."""
        if ident.id_type != IdType.KEY_ID:
            return None
        peer = self._peer(ident.data)
        if peer is None:
            asked = self._asked.get(ident.data)
            if asked is None and self.on_miss is not None:
                # registered since the last refresh? The refresher runs now; the IKE_AUTH request waits
                # unanswered and its retransmission finds the answer (RFC 7296 2.1)
                if len(self._asked) > 10000:
                    self._asked.clear()
                self._asked[ident.data] = self._generation
                raise CredentialsPending(f"looking up {ident} in the database")
            if asked is not None and self._generation - asked < 2:  # the refresh running at the miss
                raise CredentialsPending(f"looking up {ident} in the database")  # may predate the row
            self._asked.pop(ident.data, None)
            log.info("no peer registered with keyid %s", ident)
            return None
        self._asked.pop(ident.data, None)
        if peer.keyid in self._keys:
            return self._keys[peer.keyid]
        try:
            key: PublicKey | None = load_public_key(peer.public_key)
        except Exception as e:  # noqa: BLE001 - a broken row must not break authentication of others
            log.warning("peer '%s': stored public key unusable: %s", peer.alias, e)
            key = None
        if len(self._keys) > 10000:
            self._keys.clear()
        self._keys[peer.keyid] = key
        return key

    def known(self, identity: str) -> PortalPeer | None:
        """The portal peer of an identity in the snapshot (no refresh is asked for a miss)."""
        kid = _keyid(identity)
        return self._by_keyid.get(kid) if kid is not None else None

    def owner_of(self, identity: str) -> str | None:
        kid = _keyid(identity)
        peer = self._peer(kid) if kid is not None else None
        return str(peer.user_id) if peer is not None else None

    def alias_of(self, identity: str) -> str | None:
        kid = _keyid(identity)
        peer = self._peer(kid) if kid is not None else None
        return peer.alias if peer is not None else None

    def granted(self, requester: str, target: str) -> bool:
        """schema.sql: a peer without grant rows may reach everyone; with rows only the listed ones."""
        a, b = _keyid(requester), _keyid(target)
        if a is None or b is None:
            return False
        pa, pb = self._peer(a), self._peer(b)
        if pa is None or pb is None:
            return False
        rows = self._grants.get(pa.id)
        return not rows or pb.id in rows


def _id_row(identity: str) -> tuple[int, bytes]:
    i = Identity.parse(identity)
    return int(i.id_type), i.data


def _id_text(id_type: int, data: bytes) -> str:
    return Identity(id_type, data).canonical()


def _epoch(t: dt.datetime) -> float:
    return t.replace(tzinfo=dt.UTC).timestamp() if t.tzinfo is None else t.timestamp()


def _dt(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


class DbCallbackStore:
    """registry.RegistrationStore on the me_callback table (times are wall-clock epoch seconds).

    The registry hands over each registration it adds or drops; a flush writes only those rows (one
    DELETE by the unique key, plus one INSERT for a put), so its cost follows the changes, never the
    number of stored registrations. With `flush_loop` running (the daemon), `put`/`drop` only record
    the change and the write happens in a worker thread: the registry calls them inside the engine, on
    the event loop. Several changes of one (target, requester) before a flush collapse into the last."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._changes: dict[tuple[str, str], CallbackRegistration | None] = {}
        self._pending_lock = threading.Lock()  # flush() runs in a worker thread
        self._dirty: asyncio.Event | None = None  # set by flush_loop: writes are deferred to it
        self.rows_written = 0  # rows deleted or inserted by flushes (the scale test counts them)

    def load_registrations(self) -> list[CallbackRegistration]:
        now = _dt(time.time())
        with self.sessions() as s:
            rows = s.scalars(select(MeCallback).where(MeCallback.expires > now)).all()
            out = [CallbackRegistration(_id_text(r.target_id_type, r.target_id),
                                        _id_text(r.requester_id_type, r.requester_id),
                                        _epoch(r.created), _epoch(r.expires)) for r in rows]
        log.info("loaded %d callback registration(s) from the database", len(out))
        return out

    def put(self, registration: CallbackRegistration) -> None:
        self._record((registration.target, registration.requester), registration)

    def drop(self, target: str, requester: str) -> None:
        self._record((target, requester), None)

    def _record(self, key: tuple[str, str], registration: CallbackRegistration | None) -> None:
        with self._pending_lock:
            self._changes[key] = registration
        if self._dirty is not None:
            self._dirty.set()
        else:
            self.flush()

    async def flush_loop(self) -> None:
        """Write the recorded changes whenever there are some, in a worker thread."""
        self._dirty = asyncio.Event()
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    await asyncio.to_thread(self.flush)
                except SQLAlchemyError as e:
                    log.warning("saving the callback registrations failed: %s", e)
        finally:
            self._dirty = None

    def flush(self) -> None:
        """Write what `put`/`drop` recorded (blocking SQL); on failure the changes are kept for the
        next flush unless newer ones replaced them."""
        with self._pending_lock:
            changes, self._changes = self._changes, {}
        if not changes:
            return
        try:
            with self.sessions.begin() as s:
                for (target, requester), reg in changes.items():
                    rt, rd = _id_row(requester)
                    tt, td = _id_row(target)
                    s.execute(delete(MeCallback).where(
                        MeCallback.requester_id_type == rt, MeCallback.requester_id == rd,
                        MeCallback.target_id_type == tt, MeCallback.target_id == td))
                    self.rows_written += 1
                    if reg is not None:
                        s.add(MeCallback(requester_id_type=rt, requester_id=rd, target_id_type=tt,
                                         target_id=td, created=_dt(reg.created), expires=_dt(reg.expires)))
                        self.rows_written += 1
        except SQLAlchemyError:
            with self._pending_lock:
                for key, reg in changes.items():
                    self._changes.setdefault(key, reg)
            raise
