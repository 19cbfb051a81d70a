"""Server manager portal: accounts and their registered peers (mediation server side).

Pages (``<base>/<controller>/<action>/<id>``):
  user: login, logout, add (register), edit, delete, help   (login/add/help are public)
  peer: list, add, edit/<id>, delete/<id>, access/<id> (who the peer may reach: mediation_grant rows),
        presence (JSON: the user's peers' presence, polled by the list page)
  admin: users, peers, user/<id> (disable/enable), settings   (operators only: ``operator.py``)

Launcher: ``python -m medmgr_web.server_manager --socket PATH | --bind HOST:PORT --db URL
--ms-address HOST --ms-public-key PEMFILE``; ``--make-admin LOGIN`` gives an account the operator
role and exits (the first account registered has it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from flask import abort, current_app, flash, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session, sessionmaker

from med_db import data
from med_db import presence as pr
from med_db.keyid import key_description, keyid_text, parse_peer_public_key, pem_from_spki
from med_db.models import Peer, User, utcnow
from medmgr_web import forms, operator
from medmgr_web import portal as web
from medmgr_web import validation as v
from medmgr_web.launcher import portal_parser, serve, throttle_config
from medmgr_web.presence import user_presence
from medmgr_web.security import hash_password, verify_password
from medmgr_web.swanctl import SERVER_KEY_FILE, SnippetPeer, conn_names, parse_subnets, swanctl_conf
from medmgr_web.throttle import ThrottleConfig


@dataclass
class ServerManagerConfig:
    ms_address: str = "mediation.example.net"
    ms_port: int = 500
    ms_public_key_pem: str | None = None
    password_min_length: int = 8
    session_timeout: float = 900.0
    max_sessions: int = 10_000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)


@dataclass(frozen=True)
class MediationServer:
    address: str
    port: int
    keyid: bytes | None  # from --ms-public-key
    pem: str | None      # that key as a PEM public key, whatever form the file had


def _ms() -> MediationServer:
    return cast(MediationServer, current_app.extensions["medsrv"])


def _uid() -> int:
    uid = web.user_id()
    assert uid is not None  # the auth filter lets only logged-in users through
    return uid


def _user_valid(db: Session, uid: int) -> bool:
    user = data.get_user(db, uid)
    return user is not None and not user.disabled  # a disabled account loses its logins at once


def _context() -> dict[str, Any]:
    uid = web.user_id()
    user = None if uid is None else data.get_user(web.db(), uid)
    return {"user_login": None if user is None else user.login, "is_admin": user is not None and user.admin,
            "registration_open": pr.registration_open(web.db())}


# -- user ---------------------------------------------------------------------------------------------


def _login_refusal(user: User) -> str | None:
    return "This account is disabled; ask the operator of this service." if user.disabled else None


def user_login() -> ResponseReturnValue:
    return web.account_login(_login_refusal, "peer_list")


def user_logout() -> ResponseReturnValue:
    web.logout_user()
    return web.redirect("user_login")


def user_add() -> ResponseReturnValue:
    form = forms.RegisterForm()
    db = web.db()
    if not pr.registration_open(db) and pr.count_users(db) > 0:
        return web.render("user/add.html", status=403, form=None, closed=True,
                          errors=["Registration is closed on this server; ask its operator for an account."])
    if request.method == "GET":
        return web.render("user/add.html", form=form, closed=False)
    errors: list[str] = []
    if form.validate():
        first = pr.count_users(db) == 0
        try:
            user = data.create_user(db, form.new_login.data or "", hash_password(form.new_password.data or ""))
        except data.DataError as exc:
            errors.append(str(exc))
        else:
            if first:  # the first account runs the service: the operator role (operator.py)
                user.admin = True
            web.login_user(user.id)
            flash(f"Welcome, {user.login}! Register your first peer below.")
            return web.redirect("peer_list")
    return web.render("user/add.html", status=400, form=form, errors=errors, closed=False)


def user_edit() -> ResponseReturnValue:
    db = web.db()
    user = data.get_user(db, _uid())
    assert user is not None
    form = forms.AccountForm()
    if request.method == "GET":
        form.new_login.data = user.login
        return web.render("user/edit.html", form=form)
    valid = form.validate()
    errors: list[str] = []
    if not verify_password(form.old_password.data or "", user.password):
        errors.append("Password verification failed.")
    elif valid:
        new_pw = form.new_password.data or ""
        try:
            data.update_user(db, user, form.new_login.data or "", hash_password(new_pw) if new_pw else None)
        except data.DataError as exc:
            errors.append(str(exc))
        else:
            flash("Account updated.")
            return web.redirect("peer_list")
    return web.render("user/edit.html", status=400, form=form, errors=errors)


def user_delete() -> ResponseReturnValue:
    db = web.db()
    user = data.get_user(db, _uid())
    assert user is not None
    form = forms.DeleteAccountForm()
    if not verify_password(form.password.data or "", user.password):
        account = forms.AccountForm(formdata=None, new_login=user.login)
        return web.render("user/edit.html", status=400, form=account,
                          errors=["Password verification failed; the account was not deleted."])
    data.delete_user(db, user.id)
    web.portal().store.drop_user(user.id, db)  # the account's other sessions, in every process
    web.logout_user()
    return web.redirect("user_login")


def user_help() -> ResponseReturnValue:
    ms = _ms()
    setup, errors = (None, []) if web.user_id() is None else _swanctl_setup(_uid())
    return web.render("user/help.html", ms_address=ms.address, ms_port=ms.port, ms_pem=ms.pem,
                      ms_keyid=ms.keyid, setup=setup, errors=errors)


def _swanctl_setup(uid: int) -> tuple[dict[str, Any], list[str]]:
    """The Help page's strongSwan section: for the selected peer (``?peer=ID``) its swanctl.conf and
    key files, with the subnets behind each peer from the ``net_<ID>`` fields (GET, nothing is
    stored)."""
    db = web.db()
    own = list(data.list_peers(db, uid))
    setup: dict[str, Any] = {"peers": [], "me": None}
    if not own:
        return setup, []
    by_id = {p.id: p for p in own}
    wanted = v.parse_id(request.args.get("peer", ""))
    me = by_id.get(wanted) if wanted is not None else None
    if me is None:
        me = own[0]
    # the peers `me` may reach: its access list (any owner) or all the user's other peers, each of
    # which must in turn accept `me` (the server checks both directions, see the access page)
    targets = list(data.list_grants(db, me.id)) if data.is_restricted(db, me.id) else \
        [p for p in own if p.id != me.id]
    targets = [t for t in targets if data.peer_may_mediate(db, t.id, me.id)]
    foreign = [t for t in targets if t.user_id != uid]
    listed = own + foreign
    names = dict(zip([p.id for p in listed], conn_names(
        [p.alias for p in own] + [f"peer-{p.keyid.hex()[:8]}" for p in foreign]), strict=True))
    errors: list[str] = []
    subnets: dict[int, tuple[str, ...]] = {}
    for p in listed:
        nets, err = parse_subnets(request.args.get(f"net_{p.id}", "")[:1000])
        if err:
            errors.append(f"{names[p.id]}: {err}")
        subnets[p.id] = nets
    setup["peers"] = [{"id": p.id, "name": names[p.id], "own": p.user_id == uid,
                       "net": request.args.get(f"net_{p.id}", "")[:1000], "keyid": p.keyid} for p in listed]
    setup["me"] = {"id": me.id, "name": names[me.id], "keyid": me.keyid}
    setup["reach"] = [names[t.id] for t in targets]
    setup["missing_subnets"] = not subnets[me.id] or any(not subnets[t.id] for t in targets)
    ms = _ms()
    if ms.keyid is None or ms.pem is None:
        return setup, errors
    snippet = [SnippetPeer(names[p.id], p.keyid, subnets[p.id]) for p in [me, *targets]]
    setup["conf"] = swanctl_conf(snippet[0], snippet[1:], ms.address, ms.port, ms.keyid)
    setup["files"] = [{"name": SERVER_KEY_FILE, "what": "the mediation server's public key", "pem": ms.pem}] + [
        {"name": f"{names[p.id]}.pem", "what": "this peer's public key" if p is me else "its peer's public key",
         "pem": pem_from_spki(p.public_key)} for p in [me, *targets]]
    return setup, errors


# -- peer ---------------------------------------------------------------------------------------------


def _peer_or_404(ident: str) -> Peer:
    pid = v.parse_id(ident)
    peer = None if pid is None else data.get_peer(web.db(), _uid(), pid)
    if peer is None:  # missing or someone else's: indistinguishable
        abort(404, "Peer not found.")
    return peer


def peer_list() -> ResponseReturnValue:
    db, uid = web.db(), _uid()
    counts = data.grant_counts(db, uid)
    peers = list(data.list_peers(db, uid))
    live = user_presence(db, uid, peers, utcnow())
    rows = [
        {"id": p.id, "alias": p.alias, "keyid": p.keyid,
         "since": p.created.strftime("%Y-%m-%d %H:%M UTC"), "kind": key_description(p.public_key),
         "grants": counts.get(p.id),  # None: may reach every peer
         "presence": live["peers"][str(p.id)]}
        for p in peers
    ]
    return web.render("peer/list.html", peers=rows, server=live["server"], poll_ms=POLL_MS)


POLL_MS = 2000  # the peer list asks for presence this often


def peer_presence() -> ResponseReturnValue:
    """The user's peers' presence as JSON (the list page polls it): only the logged-in user's own
    peers, so nobody learns anything of another user's."""
    web.session().passive = True  # polling is no activity of the user: the idle timeout still applies
    db, uid = web.db(), _uid()
    resp = jsonify(user_presence(db, uid, list(data.list_peers(db, uid)), utcnow()))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def peer_add() -> ResponseReturnValue:
    form = forms.PeerForm()
    if request.method == "GET":
        return web.render("peer/add.html", form=form)
    errors: list[str] = []
    if form.validate() and form.public_key.parsed is not None:
        spki, keyid = form.public_key.parsed
        try:
            peer = data.add_peer(web.db(), _uid(), form.alias.data or "", spki, keyid)
        except data.DataError as exc:
            errors.append(str(exc))
        else:
            flash(f"Peer {peer.alias} added, identity {keyid_text(peer.keyid)}.")
            return web.redirect("peer_list")
    return web.render("peer/add.html", status=400, form=form, errors=errors)


def peer_edit(ident: str) -> ResponseReturnValue:
    db = web.db()
    peer = _peer_or_404(ident)
    info = {"id": peer.id, "keyid": peer.keyid, "alias": peer.alias,
            "since": peer.created.strftime("%Y-%m-%d %H:%M UTC"),
            "grants": len(data.list_grants(db, peer.id)) if data.is_restricted(db, peer.id) else None}
    form = forms.PeerForm()
    if request.method == "GET":
        form.alias.data, form.public_key.data = peer.alias, pem_from_spki(peer.public_key)
        return web.render("peer/edit.html", form=form, peer=info)
    errors: list[str] = []
    if form.validate() and form.public_key.parsed is not None:
        spki, keyid = form.public_key.parsed
        try:
            data.update_peer(db, peer, form.alias.data or "", spki, keyid)
        except data.DataError as exc:
            errors.append(str(exc))
        else:
            flash(f"Peer {peer.alias} saved.")
            return web.redirect("peer_list")
    return web.render("peer/edit.html", status=400, form=form, peer=info, errors=errors)


def _keyid_targets(peer: Peer, text: str) -> tuple[list[Peer], list[str]]:
    """Peers named by ID_KEY_ID in the access form (any owner: the keyid is the explicit way to name
    another user's peer), and the errors to show."""
    tokens, error = v.parse_keyids(text)
    if error:
        return [], [error]
    found: list[Peer] = []
    errors: list[str] = []
    for token in tokens:
        if token.keyid is None:
            errors.append(f"\u201c{token.shown}\u201d is not an ID_KEY_ID: {v.KEYID_FORMAT_HINT}")
            continue
        target = data.find_peer_by_keyid(web.db(), token.keyid)
        if target is None:
            errors.append(f"{keyid_text(token.keyid)}: No peer with this ID_KEY_ID is registered.")
        elif target.id == peer.id:
            errors.append(f"{keyid_text(token.keyid)} is this peer itself; it does not need to be listed.")
        else:
            found.append(target)
    return found, errors


def peer_access(ident: str) -> ResponseReturnValue:
    """Who this peer may reach: everyone (no grant rows) or only the listed peers."""
    db = web.db()
    peer = _peer_or_404(ident)
    own = [p for p in data.list_peers(db, _uid()) if p.id != peer.id]
    granted = data.list_grants(db, peer.id)
    # other users' peers appear only once granted (they were named by ID_KEY_ID): keyid, no alias
    foreign = [p for p in granted if p.user_id != _uid()]
    selectable = {p.id for p in own} | {p.id for p in foreign}
    info = {"id": peer.id, "alias": peer.alias, "keyid": peer.keyid}
    form = forms.AccessForm()

    def page(status: int, checked: set[int], errors: list[str]) -> ResponseReturnValue:
        return web.render(
            "peer/access.html", status=status, peer=info, form=form, errors=errors,
            own=[{"id": p.id, "alias": p.alias, "keyid": p.keyid, "checked": p.id in checked} for p in own],
            foreign=[{"id": p.id, "keyid": p.keyid, "checked": p.id in checked} for p in foreign],
        )

    if request.method == "GET":
        form.scope.data = "listed" if data.is_restricted(db, peer.id) else "all"
        return page(200, {p.id for p in granted}, [])
    # the ticked peers: one checkbox per peer, target_<id>; any other id is someone else's or none
    checked: set[int] = set()
    for name in request.form:
        if name.startswith("target_"):
            tid = v.parse_id(name[len("target_"):])
            if tid is None or tid not in selectable:
                abort(404, "Peer not found.")
            checked.add(tid)
    errors: list[str] = []
    targets: set[int] = set()
    if form.validate() and form.scope.data == "listed":
        named, errors = _keyid_targets(peer, form.add_keyids.data or "")
        targets = checked | {p.id for p in named}
        if not targets and not errors:
            errors.append("Select at least one peer, or choose \u201cevery registered peer\u201d.")
    if not errors and not form.errors:
        try:
            data.set_grants(db, peer.id, targets)
        except data.DataError as exc:
            errors.append(str(exc))
    if errors or form.errors:
        return page(400, checked, errors)
    if targets:
        n = len(targets)
        flash(f"Peer {peer.alias} may now reach only {n} listed peer{'s' if n != 1 else ''}.")
    else:
        flash(f"Peer {peer.alias} may now reach every registered peer.")
    return web.redirect("peer_list")


def peer_delete(ident: str) -> ResponseReturnValue:
    peer = _peer_or_404(ident)
    alias = peer.alias
    data.delete_peer(web.db(), peer.user_id, peer.id)
    flash(f"Peer {alias} deleted.")
    return web.redirect("peer_list")


_GET_POST = ["GET", "POST"]
ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/user/login", user_login, _GET_POST),
    ("/user/logout", user_logout, ["POST"]),
    ("/user/add", user_add, _GET_POST),
    ("/user/edit", user_edit, _GET_POST),
    ("/user/delete", user_delete, ["POST"]),
    ("/user/help", user_help, ["GET"]),
    ("/peer/list", peer_list, ["GET"]),
    ("/peer/add", peer_add, _GET_POST),
    ("/peer/edit/<ident>", peer_edit, _GET_POST),
    ("/peer/delete/<ident>", peer_delete, ["POST"]),
    ("/peer/access/<ident>", peer_access, _GET_POST),
    ("/peer/presence", peer_presence, ["GET"]),
    *operator.ROUTES,
]
PUBLIC = frozenset({"user_login", "user_add", "user_help"})


def create_app(db: str | sessionmaker[Session] | None = None,
               config: ServerManagerConfig | None = None, *, init_db: bool = True,
               clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep) -> web.Portal:
    """WSGI app factory.  ``db`` is a database URL or a ready session factory; ``clock`` (wall-clock
    seconds) and ``sleep`` drive session expiry and login throttling."""
    cfg = config or ServerManagerConfig()
    factory = web.session_factory(db, init_db=init_db)
    settings = web.PortalSettings(
        name="medsrv", title="Mediation Service", templates="server/", login_endpoint="user_login",
        home_endpoint="peer_list", public=PUBLIC, session_timeout=cfg.session_timeout,
        max_sessions=cfg.max_sessions, throttle=cfg.throttle)
    app = web.make_portal(__name__, settings, factory, clock=clock, sleep=sleep, user_valid=_user_valid,
                          context=_context)
    app.config["PASSWORD_MIN_LENGTH"] = cfg.password_min_length
    keyid = pem = None
    if cfg.ms_public_key_pem:
        spki, keyid = parse_peer_public_key(cfg.ms_public_key_pem)
        pem = pem_from_spki(spki)
    app.extensions["medsrv"] = MediationServer(cfg.ms_address, cfg.ms_port, keyid, pem)
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view.__name__, view, methods=methods)
    return app


def main(argv: list[str] | None = None) -> int:
    # --make-admin needs only the database: no --socket / --bind
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--make-admin")
    pre.add_argument("--db")
    early, _ = pre.parse_known_args(argv)
    if early.make_admin:
        return operator.make_admin_cmd(early.db, early.make_admin)
    p = portal_parser("medmgr-server", __doc__)
    p.add_argument("--ms-address", default="mediation.example.net", help="mediation server host name/address")
    p.add_argument("--ms-port", type=int, default=500, help="mediation server IKE port")
    p.add_argument("--ms-public-key", metavar="FILE",
                   help="mediation server public key (PEM public key or certificate, or OpenSSH line)")
    p.add_argument("--password-min-length", type=int, default=8)
    p.add_argument("--make-admin", metavar="LOGIN", help="give the account LOGIN the operator role, then exit")
    args = p.parse_args(argv)
    pem = None
    if args.ms_public_key:
        with open(args.ms_public_key, encoding="ascii") as f:
            pem = f.read()
    cfg = ServerManagerConfig(
        ms_address=args.ms_address, ms_port=args.ms_port, ms_public_key_pem=pem,
        password_min_length=args.password_min_length, session_timeout=args.session_timeout,
        max_sessions=args.max_sessions, throttle=throttle_config(args),
    )
    serve(create_app(args.db, cfg), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
