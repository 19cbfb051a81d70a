"""The mediation server's view of med_db: peers registered in the portal authenticate by their RSA/EC
public key under their ID_KEY_ID; callback registrations persist in `me_callback`; the optional
`mediation_grant` table and the peers' owners drive the authorization policies.

A peer registered in the portal can connect at once: lookups go to the database (with a short cache
so a burst of IKE_AUTHs does not hammer it), no restart needed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from core_ike.constants import IdType
from core_ike.errors import LocalError
from core_ike.ike.creds import PublicKey, load_public_key
from core_ike.ike.identity import Identity
from med_db.engine import DatabaseError, make_session_factory, open_database
from med_db.models import MeCallback, MediationGrant, Peer

from .registry import CallbackRegistration

log = logging.getLogger("mediation_server.db")


def open_sessions(url: str) -> sessionmaker[Session]:
    """The server's med_db: missing tables are created as the portal creates them, so the server may
    start first; a database that cannot be opened or reached stops the start with one line."""
    try:
        return make_session_factory(open_database(url))
    except DatabaseError as e:
        raise LocalError(f"[mediation] database: {e}") from None


def _keyid(identity: str) -> bytes | None:
    try:
        i = Identity.parse(identity)
    except Exception:  # noqa: BLE001 - not a parseable identity, so not a portal peer
        return None
    return i.data if i.id_type == IdType.KEY_ID else None


class PortalPeers:
    """Public keys, owners and grants of the peers in med_db."""

    def __init__(self, sessions: sessionmaker[Session], cache_ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._cache: dict[bytes, tuple[float, Peer | None]] = {}

    def _peer(self, keyid: bytes) -> Peer | None:
        now = self.clock()
        hit = self._cache.get(keyid)
        if hit is not None and now - hit[0] < self.cache_ttl:
            return hit[1]
        with self.sessions() as s:
            peer = s.scalars(select(Peer).where(Peer.keyid == keyid)).one_or_none()
            if peer is not None:
                s.expunge(peer)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[keyid] = (now, peer)
        return peer

    def public_key(self, ident: Identity) -> PublicKey | None:
        """Credentials.resolver hook: the registered key of an ID_KEY_ID identity."""
        if ident.id_type != IdType.KEY_ID:
            return None
        peer = self._peer(ident.data)
        if peer is None:
            log.info("no peer registered with keyid %s", ident)
            return None
        try:
            return load_public_key(peer.public_key)
        except Exception as e:  # noqa: BLE001 - a broken row must not break authentication of others
            log.warning("peer '%s': stored public key unusable: %s", peer.alias, e)
            return None

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
        with self.sessions() as s:
            rows = s.scalars(select(MediationGrant.target_id).where(MediationGrant.peer_id == pa.id)).all()
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
    """registry.RegistrationStore on the me_callback table (times are wall-clock epoch seconds)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def load_registrations(self) -> list[CallbackRegistration]:
        now = _dt(time.time())
        with self.sessions() as s:
            rows = s.scalars(select(MeCallback).where(MeCallback.expires > now)).all()
            out = [CallbackRegistration(_id_text(r.target_id_type, r.target_id),
                                        _id_text(r.requester_id_type, r.requester_id),
                                        _epoch(r.created), _epoch(r.expires)) for r in rows]
        log.info("loaded %d callback registration(s) from the database", len(out))
        return out

    def save_registrations(self, registrations: Sequence[CallbackRegistration]) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(MeCallback))
            for r in registrations:
                rt, rd = _id_row(r.requester)
                tt, td = _id_row(r.target)
                s.add(MeCallback(requester_id_type=rt, requester_id=rd, target_id_type=tt, target_id=td,
                                 created=_dt(r.created), expires=_dt(r.expires)))
