"""Presence and operator data: what the mediation server writes about its peers (``peer_presence``,
``server_state``), what the server manager reads of it, and the operator's functions (users, admin
role, disabled accounts, settings).  Each function takes a Session; the caller commits.

Times are naive UTC ``datetime``s, as in every DATETIME column (schema.sql).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from med_db.models import Peer, PeerPresence, ServerState, User, WebSetting, utcnow

REGISTRATION = "registration"  # web_setting: "open" (default) | "closed"
PATHS = ("direct", "relayed")


@dataclass(frozen=True)
class Mediation:
    """One current mediated connection of a peer, as the mediation server saw it set up."""

    peer: bytes  # the other peer's keyid
    path: str  # "direct" | "relayed"
    since: dt.datetime


@dataclass(frozen=True)
class PresenceRow:
    """A peer's presence to write (mediation server side)."""

    peer_id: int
    online: bool
    endpoint: str | None
    nat: str | None
    since: dt.datetime | None
    last_seen: dt.datetime
    connections: tuple[Mediation, ...] = ()


@dataclass(frozen=True)
class Totals:
    peers_online: int
    mediations: int
    relays_active: int
    relays_total: int


def encode_connections(conns: Iterable[Mediation]) -> str:
    return json.dumps([{"peer": c.peer.hex(), "path": c.path, "since": c.since.isoformat(timespec="seconds")}
                       for c in conns], separators=(",", ":"))


def decode_connections(text: str) -> list[Mediation]:
    """The stored list; entries that do not parse are left out (the column is the server's to write)."""
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        return []
    out: list[Mediation] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(Mediation(bytes.fromhex(item["peer"]), str(item["path"]),
                                 dt.datetime.fromisoformat(item["since"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------ the mediation server's writes


def server_started(s: Session, server: str, now: dt.datetime) -> int:
    """Mediation server ``server`` starts: nobody is online at it yet (rows it left online when it
    stopped or crashed are stale) and its totals start over.  Returns the number of rows marked
    offline."""
    n = s.execute(update(PeerPresence).where(PeerPresence.online.is_(True), PeerPresence.server == server)
                  .values(online=False, since=None, connections="[]", last_seen=now)).rowcount  # type: ignore[attr-defined]
    write_totals(s, server, Totals(0, 0, 0, 0), now, started=now)
    return int(n or 0)


def write_presence(s: Session, server: str, rows: Iterable[PresenceRow]) -> None:
    """Insert or replace each row (one statement per peer: the cost follows the number of changes).
    An offline row replaces only this server's own row or an offline one: a peer that registered at
    another server of the cluster meanwhile stays online there."""
    existing: set[int] = set()
    rows = list(rows)
    ids = [r.peer_id for r in rows]
    if ids:
        existing = set(s.scalars(select(PeerPresence.peer_id).where(PeerPresence.peer_id.in_(ids))))
        # a peer deleted in the portal since the server's snapshot: its row would break the foreign key
        known = set(s.scalars(select(Peer.id).where(Peer.id.in_(ids))))
        rows = [r for r in rows if r.peer_id in known]
    for r in rows:
        values: dict[str, Any] = {"online": r.online, "server": server, "endpoint": r.endpoint, "nat": r.nat,
                                  "since": r.since, "last_seen": r.last_seen,
                                  "connections": encode_connections(r.connections)}
        if r.peer_id not in existing:
            s.add(PeerPresence(peer_id=r.peer_id, **values))
            continue
        stmt = update(PeerPresence).where(PeerPresence.peer_id == r.peer_id)
        if not r.online:
            stmt = stmt.where(or_(PeerPresence.server == server, PeerPresence.online.is_(False)))
        s.execute(stmt.values(**values))
    s.flush()


def write_totals(s: Session, server: str, totals: Totals, now: dt.datetime,
                 started: dt.datetime | None = None) -> None:
    row = s.get(ServerState, server)
    if row is None:
        row = ServerState(server=server, started=started or now)
        s.add(row)
    elif started is not None:
        row.started = started
    row.updated = now
    row.peers_online, row.mediations = totals.peers_online, totals.mediations
    row.relays_active, row.relays_total = totals.relays_active, totals.relays_total
    s.flush()


# ------------------------------------------------------------------ what the portal reads


def presence_of_user(s: Session, user_id: int) -> dict[int, PeerPresence]:
    """The presence rows of ``user_id``'s peers, by peer id (peers never seen online have none)."""
    q = select(PeerPresence).join(Peer, Peer.id == PeerPresence.peer_id).where(Peer.user_id == user_id)
    return {p.peer_id: p for p in s.scalars(q)}


def peers_by_keyid(s: Session, keyids: Iterable[bytes]) -> dict[bytes, Peer]:
    ks = list(set(keyids))
    if not ks:
        return {}
    return {bytes(p.keyid): p for p in s.scalars(select(Peer).where(Peer.keyid.in_(ks)))}


def server_states(s: Session) -> Sequence[ServerState]:
    """Every mediation server that ever wrote to this database, by name."""
    return s.scalars(select(ServerState).order_by(ServerState.server)).all()


# ------------------------------------------------------------------ operator


def count_users(s: Session) -> int:
    return int(s.scalar(select(func.count(User.id))) or 0)


def count_admins(s: Session) -> int:
    return int(s.scalar(select(func.count(User.id)).where(User.admin.is_(True))) or 0)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_users(s: Session, text: str, offset: int, limit: int) -> tuple[Sequence[tuple[User, int]], int]:
    """Users whose login contains ``text`` (all when empty), by login, with their number of peers;
    and how many match in all."""
    where: list[ColumnElement[bool]] = [] if not text else [User.login.like(_like(text), escape="\\")]
    total = int(s.scalar(select(func.count(User.id)).where(*where)) or 0)
    npeers = select(func.count(Peer.id)).where(Peer.user_id == User.id).correlate(User).scalar_subquery()
    q = select(User, npeers).where(*where).order_by(User.login).offset(offset).limit(limit)
    return [(u, int(n)) for u, n in s.execute(q).all()], total


def search_peers(s: Session, text: str, offset: int, limit: int
                 ) -> tuple[Sequence[tuple[Peer, User, PeerPresence | None]], int]:
    """Every user's peers whose alias, owner or keyid (hex) contains ``text``, with owner and
    presence; and how many match in all."""
    where: list[ColumnElement[bool]] = []
    if text:
        cond: list[ColumnElement[bool]] = [Peer.alias.like(_like(text), escape="\\"), User.login.like(_like(text), escape="\\")]
        hexed = text.lower().removeprefix("keyid:").removeprefix("#").replace(":", "")
        if len(hexed) == 40 and all(c in "0123456789abcdef" for c in hexed):
            cond.append(Peer.keyid == bytes.fromhex(hexed))
        where.append(or_(*cond))
    base = select(Peer, User, PeerPresence).join(User, User.id == Peer.user_id) \
        .outerjoin(PeerPresence, PeerPresence.peer_id == Peer.id).where(*where)
    total = int(s.scalar(select(func.count()).select_from(base.subquery())) or 0)
    rows = s.execute(base.order_by(User.login, Peer.alias).offset(offset).limit(limit)).all()
    return [(p, u, pp) for p, u, pp in rows], total


def count_peers(s: Session) -> int:
    return int(s.scalar(select(func.count(Peer.id))) or 0)


def set_user_disabled(s: Session, user_id: int, disabled: bool) -> User | None:
    user = s.get(User, user_id)
    if user is None:
        return None
    user.disabled = disabled
    # the mediation server reloads its peers when their `updated` moves (mediation_server/db.py)
    s.execute(update(Peer).where(Peer.user_id == user_id).values(updated=utcnow()))
    s.flush()
    return user


def make_admin(s: Session, login: str) -> User | None:
    user = s.scalars(select(User).where(User.login == login)).one_or_none()
    if user is not None:
        user.admin = True
        s.flush()
    return user


def get_setting(s: Session, name: str, default: str) -> str:
    row = s.get(WebSetting, name)
    return default if row is None else row.value


def set_setting(s: Session, name: str, value: str) -> None:
    row = s.get(WebSetting, name)
    if row is None:
        s.add(WebSetting(name=name, value=value, updated=utcnow()))
    else:
        row.value, row.updated = value, utcnow()
    s.flush()


def registration_open(s: Session) -> bool:
    return get_setting(s, REGISTRATION, "open") != "closed"
