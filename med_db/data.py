"""med_db data functions.  Each takes a Session; the caller opens it, commits and closes it.

Errors meant for users are raised as :class:`DataError` with the message to show.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import CursorResult, Result, case, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from med_db.keyid import keyid_of, spki_der
from med_db.models import (
    STATUS_DOWN,
    STATUS_NAMES,
    ClientConfig,
    Connection,
    MeCallback,
    MediationGrant,
    MediationServerConfig,
    Peer,
    User,
    utcnow,
)


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


class DataError(ValueError):
    """A user-facing data error (duplicate names, missing rows)."""


# ------------------------------------------------------------------ users


def get_user(s: Session, user_id: int) -> User | None:
    return s.get(User, user_id)


def get_user_by_login(s: Session, login: str) -> User | None:
    return s.scalars(select(User).where(User.login == login)).one_or_none()


def create_user(s: Session, login: str, password_hash: str) -> User:
    if get_user_by_login(s, login) is not None:
        raise DataError("Username already exists.")
    user = User(login=login, password=password_hash, created=utcnow())
    s.add(user)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise DataError("Username already exists.") from None
    return user


def update_user(s: Session, user: User, login: str, password_hash: str | None) -> None:
    if login != user.login and get_user_by_login(s, login) is not None:
        raise DataError("Username already exists.")
    user.login = login
    if password_hash is not None:
        user.password = password_hash
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise DataError("Username already exists.") from None


def delete_user(s: Session, user_id: int) -> bool:
    """Delete a user; the database cascades to their peers."""
    return _rowcount(s.execute(delete(User).where(User.id == user_id))) > 0


# ------------------------------------------------------------------ peers (server side)


def list_peers(s: Session, user_id: int) -> Sequence[Peer]:
    return s.scalars(select(Peer).where(Peer.user_id == user_id).order_by(Peer.alias)).all()


def get_peer(s: Session, user_id: int, peer_id: int) -> Peer | None:
    """The peer if it exists *and* belongs to ``user_id`` (ownership check)."""
    return s.scalars(select(Peer).where(Peer.id == peer_id, Peer.user_id == user_id)).one_or_none()


def _check_peer_unique(s: Session, user_id: int, alias: str, keyid: bytes, peer_id: int | None) -> None:
    q = select(Peer.id).where(Peer.user_id == user_id, Peer.alias == alias)
    if peer_id is not None:
        q = q.where(Peer.id != peer_id)
    if s.scalars(q).first() is not None:
        raise DataError(f"You already have a peer named \u201c{alias}\u201d.")
    q = select(Peer.id).where(Peer.keyid == keyid)
    if peer_id is not None:
        q = q.where(Peer.id != peer_id)
    if s.scalars(q).first() is not None:
        raise DataError("Peer already exists: this public key is already registered (a key can be registered once).")


def add_peer(s: Session, user_id: int, alias: str, spki: bytes, keyid: bytes) -> Peer:
    _check_peer_unique(s, user_id, alias, keyid, None)
    now = utcnow()
    peer = Peer(user_id=user_id, alias=alias, keyid=keyid, public_key=spki, created=now, updated=now)
    s.add(peer)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise DataError("Peer already exists.") from None
    return peer


def update_peer(s: Session, peer: Peer, alias: str, spki: bytes, keyid: bytes) -> None:
    _check_peer_unique(s, peer.user_id, alias, keyid, peer.id)
    peer.alias, peer.public_key, peer.keyid, peer.updated = alias, spki, keyid, utcnow()
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise DataError("Peer already exists.") from None


def delete_peer(s: Session, user_id: int, peer_id: int) -> bool:
    stmt = delete(Peer).where(Peer.id == peer_id, Peer.user_id == user_id)
    return _rowcount(s.execute(stmt)) > 0


def find_peer_by_keyid(s: Session, keyid: bytes) -> Peer | None:
    """Mediation server: the registered peer authenticating as ID_KEY_ID(keyid)."""
    return s.scalars(select(Peer).where(Peer.keyid == keyid)).one_or_none()


def peer_may_mediate(s: Session, peer_id: int, target_id: int) -> bool:
    """Authorization policy: no grant rows for ``peer_id`` = all allowed; otherwise only the listed."""
    has_rows = s.scalar(select(exists().where(MediationGrant.peer_id == peer_id)))
    if not has_rows:
        return True
    return bool(
        s.scalar(
            select(exists().where(MediationGrant.peer_id == peer_id, MediationGrant.target_id == target_id))
        )
    )


def grant_mediation(s: Session, peer_id: int, target_id: int) -> None:
    s.add(MediationGrant(peer_id=peer_id, target_id=target_id, created=utcnow()))
    s.flush()


def list_grants(s: Session, peer_id: int) -> Sequence[Peer]:
    """The peers ``peer_id`` may reach (its grant rows' targets, any owner), by alias.  Empty: no rows,
    i.e. the peer may reach every registered peer."""
    return s.scalars(
        select(Peer).join(MediationGrant, MediationGrant.target_id == Peer.id)
        .where(MediationGrant.peer_id == peer_id, MediationGrant.target_id != peer_id)
        .order_by(Peer.alias, Peer.id)
    ).all()


def grant_counts(s: Session, user_id: int) -> dict[int, int]:
    """For ``user_id``'s restricted peers (those with grant rows): peer id -> number of targets (0 when
    every listed peer was deleted: still restricted, see schema.sql)."""
    others = func.sum(case((MediationGrant.target_id != MediationGrant.peer_id, 1), else_=0))
    rows = s.execute(
        select(MediationGrant.peer_id, others)
        .join(Peer, Peer.id == MediationGrant.peer_id)
        .where(Peer.user_id == user_id)
        .group_by(MediationGrant.peer_id)
    ).all()
    return {int(peer_id): int(n or 0) for peer_id, n in rows}


def is_restricted(s: Session, peer_id: int) -> bool:
    return bool(s.scalar(select(exists().where(MediationGrant.peer_id == peer_id))))


def set_grants(s: Session, peer_id: int, target_ids: Iterable[int]) -> None:
    """Replace ``peer_id``'s grant rows by ``target_ids`` (empty: no rows, every peer reachable).

    Rows that stay keep their creation time.  Ownership is the caller's business (the portal allows the
    owner's peers and peers named by ID_KEY_ID); here every target must exist and differ from the peer.
    """
    targets = set(target_ids)
    if peer_id in targets:
        raise DataError("A peer cannot be listed as reachable from itself.")
    if targets:
        found = set(s.scalars(select(Peer.id).where(Peer.id.in_(targets))))
        if found != targets:
            raise DataError("No such peer.")
    if targets:
        # schema.sql: the self row marks the peer as restricted even when all its targets are deleted
        targets.add(peer_id)
    current = set(s.scalars(select(MediationGrant.target_id).where(MediationGrant.peer_id == peer_id)))
    gone = current - targets
    if gone:
        s.execute(
            delete(MediationGrant).where(MediationGrant.peer_id == peer_id, MediationGrant.target_id.in_(gone))
        )
    now = utcnow()
    s.add_all(MediationGrant(peer_id=peer_id, target_id=t, created=now) for t in sorted(targets - current))
    s.flush()


# ------------------------------------------------------------------ callbacks (mediation server)


def add_callback(
    s: Session, requester: tuple[int, bytes], target: tuple[int, bytes], expires: dt.datetime
) -> MeCallback:
    """Register (or refresh) a callback: tell ``requester`` when ``target`` comes online."""
    cb = s.scalars(
        select(MeCallback).where(
            MeCallback.requester_id_type == requester[0],
            MeCallback.requester_id == requester[1],
            MeCallback.target_id_type == target[0],
            MeCallback.target_id == target[1],
        )
    ).one_or_none()
    if cb is None:
        cb = MeCallback(
            requester_id_type=requester[0], requester_id=requester[1],
            target_id_type=target[0], target_id=target[1], created=utcnow(), expires=expires,
        )
        s.add(cb)
    else:
        cb.expires = expires
    s.flush()
    return cb


def callbacks_for_target(s: Session, target: tuple[int, bytes], now: dt.datetime) -> Sequence[MeCallback]:
    return s.scalars(
        select(MeCallback).where(
            MeCallback.target_id_type == target[0], MeCallback.target_id == target[1], MeCallback.expires > now
        ).order_by(MeCallback.created)
    ).all()


def prune_callbacks(s: Session, now: dt.datetime) -> int:
    return _rowcount(s.execute(delete(MeCallback).where(MeCallback.expires <= now)))


# ------------------------------------------------------------------ client side


def get_client_config(s: Session) -> ClientConfig | None:
    return s.get(ClientConfig, 1)


def generate_client_key(s: Session, bits: int = 2048) -> ClientConfig:
    """Generate (or replace) this client's RSA key pair; the private key is stored as PKCS#8 DER."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pub = key.public_key()
    priv = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cfg = get_client_config(s)
    if cfg is None:
        cfg = ClientConfig(id=1)
        s.add(cfg)
    cfg.keyid, cfg.public_key, cfg.private_key, cfg.created = keyid_of(pub), spki_der(pub), priv, utcnow()
    s.flush()
    return cfg


def get_server_config(s: Session) -> MediationServerConfig | None:
    return s.get(MediationServerConfig, 1)


def set_server_config(s: Session, address: str, port: int, spki: bytes, keyid: bytes) -> MediationServerConfig:
    cfg = get_server_config(s)
    if cfg is None:
        cfg = MediationServerConfig(id=1)
        s.add(cfg)
    cfg.address, cfg.port, cfg.public_key, cfg.keyid, cfg.updated = address, port, spki, keyid, utcnow()
    s.flush()
    return cfg


def list_connections(s: Session) -> Sequence[Connection]:
    return s.scalars(select(Connection).order_by(Connection.alias)).all()


def get_connection(s: Session, conn_id: int) -> Connection | None:
    return s.get(Connection, conn_id)


def _check_connection_unique(s: Session, alias: str, keyid: bytes, conn_id: int | None) -> None:
    q = select(Connection.id).where(Connection.alias == alias)
    if conn_id is not None:
        q = q.where(Connection.id != conn_id)
    if s.scalars(q).first() is not None:
        raise DataError(f"A connection named \u201c{alias}\u201d already exists.")
    q = select(Connection.id).where(Connection.keyid == keyid)
    if conn_id is not None:
        q = q.where(Connection.id != conn_id)
    if s.scalars(q).first() is not None:
        raise DataError("A connection to this public key already exists.")


def save_connection(
    s: Session,
    conn: Connection | None,
    *,
    alias: str,
    spki: bytes,
    keyid: bytes,
    local_subnet: str | None,
    remote_subnet: str | None,
    active: bool,
) -> Connection:
    """Create (``conn`` None) or update a connection."""
    _check_connection_unique(s, alias, keyid, None if conn is None else conn.id)
    if conn is None:
        conn = Connection(status=STATUS_DOWN, created=utcnow())
        s.add(conn)
    conn.alias, conn.public_key, conn.keyid = alias, spki, keyid
    conn.local_subnet, conn.remote_subnet, conn.active = local_subnet, remote_subnet, active
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise DataError("Connection already exists.") from None
    return conn


def delete_connection(s: Session, conn_id: int) -> bool:
    return _rowcount(s.execute(delete(Connection).where(Connection.id == conn_id))) > 0


def set_connection_status(
    s: Session, conn_id: int, status: int, error: str | None = None, now: dt.datetime | None = None
) -> None:
    """Client daemon: record a status change (1 DOWN, 2 CONNECTING, 3 UP) and the last error."""
    if status not in STATUS_NAMES:
        raise ValueError(f"bad status {status}")
    s.execute(
        update(Connection)
        .where(Connection.id == conn_id)
        .values(status=status, status_changed=now or utcnow(), last_error=None if error is None else error[:255])
    )


def set_client_nat(s: Session, nat: str | None) -> None:
    """Client daemon: the NAT behaviour it measured (RFC 5780 summary), for the client manager."""
    s.execute(update(ClientConfig).where(ClientConfig.id == 1).values(nat=None if nat is None else nat[:255]))


def reset_connection_status(s: Session, now: dt.datetime | None = None) -> None:
    """Client daemon start/stop: every connection is DOWN (as strongSwan's medcli listener does)."""
    s.execute(update(Connection).values(status=STATUS_DOWN, status_changed=now or utcnow()))
