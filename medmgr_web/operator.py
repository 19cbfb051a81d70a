"""The server manager's operator pages (accounts with ``user.admin``; everyone else gets 403):

  admin/users    every account, searchable, paged; disable / enable one (a disabled account cannot
                 log in, its sessions end, and the mediation server refuses its peers:
                 mediation_server/db.py leaves them out of its snapshot)
  admin/peers    every registered peer with owner and presence, searchable, paged
  admin/settings self-registration open or closed (POST)

The server's totals (peers registered and online, mediations, relays) head the users page.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from flask import abort, flash, request
from flask.typing import ResponseReturnValue

from med_db import data
from med_db import presence as pr
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.models import utcnow
from medmgr_web import portal as web
from medmgr_web import validation as v
from medmgr_web.presence import peer_state, server_report, when

PAGE_SIZE = 25
MAX_QUERY = 100


def _operator() -> int:
    uid = web.user_id()
    user = None if uid is None else data.get_user(web.db(), uid)
    if user is None or not user.admin:
        abort(403, "This page is for the operators of this service.")
    return user.id


def _query() -> tuple[str, int]:
    """The search text and the page number (1-based) of a list page's query string."""
    text = request.args.get("q", "")[:MAX_QUERY].strip()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    return text, page


def _pages(total: int, page: int) -> dict[str, int]:
    last = max(1, math.ceil(total / PAGE_SIZE))
    return {"page": min(page, last), "last": last, "total": total}


def admin_users() -> ResponseReturnValue:
    me = _operator()
    db = web.db()
    text, page = _query()
    _, total = pr.search_users(db, text, 0, 0)
    paging = _pages(total, page)
    found, _ = pr.search_users(db, text, (paging["page"] - 1) * PAGE_SIZE, PAGE_SIZE)
    users = [{"id": u.id, "login": u.login, "admin": u.admin, "disabled": u.disabled, "peers": n,
              "created": when(u.created), "me": u.id == me} for u, n in found]
    states = pr.server_states(db)
    report = server_report(states, utcnow())
    live = [st for st in states if st.server in report["live"]]
    totals = {"peers": pr.count_peers(db), "users": pr.count_users(db),
              "online": sum(st.peers_online for st in live) if live else None,
              "mediations": sum(st.mediations for st in live) if live else None,
              "relays_active": sum(st.relays_active for st in live) if live else None,
              "relays_total": sum(st.relays_total for st in live) if live else None,
              "servers": [{"name": st.server, "started": when(st.started), "live": st in live} for st in states]}
    return web.render("admin/users.html", users=users, q=text, paging=paging, totals=totals, server=report,
                      registration=pr.registration_open(db))


def admin_peers() -> ResponseReturnValue:
    _operator()
    db = web.db()
    text, page = _query()
    _, total = pr.search_peers(db, text, 0, 0)
    paging = _pages(total, page)
    found, _ = pr.search_peers(db, text, (paging["page"] - 1) * PAGE_SIZE, PAGE_SIZE)
    report = server_report(pr.server_states(db), utcnow())
    peers = [{"id": p.id, "alias": p.alias, "keyid": p.keyid, "owner": u.login, "disabled": u.disabled,
              "presence": peer_state(presence, report["live"], {})} for p, u, presence in found]
    return web.render("admin/peers.html", peers=peers, q=text, paging=paging, server=report)


def admin_user(ident: str) -> ResponseReturnValue:
    """Disable or enable an account (POST action=disable|enable)."""
    me = _operator()
    uid = v.parse_id(ident)
    action = request.form.get("action", "")
    if uid is None or action not in ("disable", "enable"):
        abort(404, "User not found.")
    if uid == me and action == "disable":
        flash("You cannot disable your own account.")
        return web.redirect("admin_users")
    db = web.db()
    user = pr.set_user_disabled(db, uid, action == "disable")
    if user is None:
        abort(404, "User not found.")
    if user.disabled:
        web.portal().store.drop_user(user.id, db)  # its sessions end in every process
        flash(f"Account {user.login} disabled: it cannot log in, and the mediation server refuses its "
              "peers' new authentications (a mediation connection up now lasts until it ends).")
    else:
        flash(f"Account {user.login} enabled.")
    return web.redirect("admin_users", q=request.form.get("q", ""))


def admin_settings() -> ResponseReturnValue:
    _operator()
    value = request.form.get("registration", "")
    if value not in ("open", "closed"):
        abort(400, "Choose open or closed.")
    pr.set_setting(web.db(), pr.REGISTRATION, value)
    flash("Self-registration is now " + ("open: anyone may create an account." if value == "open" else
                                         "closed: only existing accounts can log in."))
    return web.redirect("admin_users")


def make_admin_cmd(url: str | None, login: str) -> int:
    """``medmgr-server --make-admin LOGIN``."""
    engine = make_engine(url)
    create_all(engine)
    with make_session_factory(engine).begin() as s:
        user = pr.make_admin(s, login)
    engine.dispose()
    if user is None:
        print(f"no account {login!r}", file=sys.stderr)
        return 1
    print(f"{login} is an operator now")
    return 0


ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/admin/users", admin_users, ["GET"]),
    ("/admin/peers", admin_peers, ["GET"]),
    ("/admin/user/<ident>", admin_user, ["POST"]),
    ("/admin/settings", admin_settings, ["POST"]),
]
