"""Presence as the server manager shows it: what the mediation server wrote to med_db
(``peer_presence``, ``server_state``; mediation_server/presence.py), for one user's peers.

Each server rewrites its totals row at least every few seconds; when that row stands still for
``STALE_AFTER`` seconds that server is not reporting (stopped, crashed, or cut off from the database)
and the state of the peers it wrote is shown as unknown rather than as the last thing written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from med_db import presence as pr
from med_db.keyid import keyid_text
from med_db.models import Peer, PeerPresence, ServerState

STALE_AFTER = 20.0  # seconds without a totals write: the server is not reporting


def when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "\u2014"


def fresh(state: ServerState, now: dt.datetime) -> bool:
    return (now - state.updated).total_seconds() <= STALE_AFTER


def server_report(states: Sequence[ServerState], now: dt.datetime) -> dict[str, Any]:
    """Which mediation servers report (``live``: their names), and a message about the others."""
    live = [st.server for st in states if fresh(st, now)]
    silent = [st for st in states if not fresh(st, now)]
    if not states:
        message = "The mediation server has not reported to this database yet."
    elif not live:
        last = max(st.updated for st in states)
        message = f"The mediation server has not reported since {when(last)}: presence unknown."
    elif silent:
        message = "Not reporting: " + ", ".join(f"{st.server} (since {when(st.updated)})" for st in silent) + \
            "; the presence of peers last seen there is unknown."
    else:
        message = ""
    return {"reporting": bool(live), "live": live, "message": message}


def peer_state(p: PeerPresence | None, live: Sequence[str], names: dict[bytes, str]) -> dict[str, Any]:
    """One peer's presence for the page and the JSON endpoint.  ``live``: the servers reporting;
    ``names``: the names of the other peers its mediations go to (the user's own aliases; another
    user's peer by its keyid only)."""
    if not live or (p is not None and p.server not in live and p.online):
        state = "unknown"
    elif p is None:
        state = "never"
    else:
        state = "online" if p.online else "offline"
    out: dict[str, Any] = {"state": state, "last_seen": "\u2014", "endpoint": "", "nat": "", "since": "",
                           "connections": []}
    if p is None:
        return out
    out["last_seen"] = "now" if state == "online" else when(p.last_seen)
    if state == "online":
        out["endpoint"] = p.endpoint or ""
        out["since"] = when(p.since)
        out["nat"] = p.nat or ""
        out["connections"] = [{"peer": names.get(c.peer) or keyid_text(c.peer), "path": c.path,
                               "since": when(c.since)}
                              for c in pr.decode_connections(p.connections) if c.path in pr.PATHS]
    elif p.nat:
        out["nat"] = p.nat
    return out


def user_presence(db: Session, user_id: int, peers: list[Peer], now: dt.datetime) -> dict[str, Any]:
    """{"server": server_report, "peers": {peer id: peer_state}} for ``user_id``'s ``peers``."""
    report = server_report(pr.server_states(db), now)
    rows = pr.presence_of_user(db, user_id)
    others = {c.peer for r in rows.values() for c in pr.decode_connections(r.connections)}
    found = pr.peers_by_keyid(db, others)
    names = {k: p.alias for k, p in found.items() if p.user_id == user_id}
    return {"server": report,
            "peers": {str(p.id): peer_state(rows.get(p.id), report["live"], names) for p in peers}}
