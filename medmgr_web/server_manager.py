"""Server manager portal: accounts and their registered peers (mediation server side).

Controllers (``<base>/<controller>/<action>/<arg>``):
  user: login, logout, add (register), edit, delete, help   (login/add/help are public)
  peer: list, add, edit/<id>, delete/<id>, access/<id> (who the peer may reach: mediation_grant rows)

Launcher: ``python -m medmgr_web.server_manager --socket PATH | --bind HOST:PORT --db URL
--ms-address HOST --ms-public-key PEMFILE``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core_ike.version import add_version_argument
from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import (
    KeyError_,
    key_description,
    keyid_text,
    parse_keyid,
    parse_peer_public_key,
    pem_from_spki,
)
from med_db.models import Peer
from medmgr_web.launcher import add_common_args, serve, throttle_config
from medmgr_web.security import DUMMY_HASH, SessionStore, hash_password, verify_password
from medmgr_web.swanctl import SERVER_KEY_FILE, SnippetPeer, conn_names, parse_subnets, swanctl_conf
from medmgr_web.throttle import LoginThrottle, ThrottleConfig
from medmgr_web.web import HTTPError, PortalApp, Request, Response, redirect

NAME_RE = re.compile(r"[A-Za-z0-9\-_@.]{1,64}")
NAME_CHARS = "A-Z a-z 0-9 - _ @ . (at most 64 characters)"
MAX_PASSWORD = 1024
KEYID_LEN = 20
MAX_KEYIDS = 100  # per submission of the access form
_KEYID_SEP = re.compile(r"[\s,;]+")


@dataclass
class ServerManagerConfig:
    ms_address: str = "mediation.example.net"
    ms_port: int = 500
    ms_public_key_pem: str | None = None
    password_min_length: int = 8
    session_timeout: float = 900.0
    max_sessions: int = 10_000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)


def validate_name(value: str, what: str) -> str | None:
    """Error message for a login/alias, or None.  Full-match regex: never loops, never crashes."""
    if not value:
        return f"{what} is missing."
    if NAME_RE.fullmatch(value) is None:
        return f"{what} invalid, valid characters: {NAME_CHARS}."
    return None


def validate_new_password(password: str, confirm: str, min_length: int) -> str | None:
    if not password:
        return "Password is missing."
    if len(password) < min_length:
        return f"Password requires at least {min_length} characters."
    if len(password) > MAX_PASSWORD:
        return f"Password too long (at most {MAX_PASSWORD} characters)."
    if password != confirm:
        return "Password not confirmed."
    return None


class ServerManager(PortalApp):
    cookie_name = "medsrv_sid"
    csrf_cookie_name = "medsrv_csrf"
    templates_prefix = "server/"
    title = "Mediation Service"

    def __init__(self, session_factory: sessionmaker[Session], config: ServerManagerConfig, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(session_factory, SessionStore(config.session_timeout, config.max_sessions, clock),
                         LoginThrottle(config.throttle, clock, sleep), "user/login", "peer/list")
        self.config = config
        self.ms_keyid: bytes | None = None
        self.ms_pem: str | None = None  # as a PEM public key, whatever form the file had
        if config.ms_public_key_pem:
            spki, self.ms_keyid = parse_peer_public_key(config.ms_public_key_pem)
            self.ms_pem = pem_from_spki(spki)
        r = self.route
        r("user", "login", self.user_login, public=True)
        r("user", "logout", self.user_logout, methods=("POST",))
        r("user", "add", self.user_add, public=True)
        r("user", "edit", self.user_edit)
        r("user", "delete", self.user_delete, methods=("POST",))
        r("user", "help", self.user_help, public=True, methods=("GET",))
        r("peer", "list", self.peer_list, methods=("GET",))
        r("peer", "add", self.peer_add)
        r("peer", "edit", self.peer_edit)
        r("peer", "delete", self.peer_delete, methods=("POST",))
        r("peer", "access", self.peer_access)

    def user_exists(self, req: Request) -> bool:
        return req.user_id is not None and data.get_user(req.db, req.user_id) is not None

    def context(self, req: Request) -> dict[str, Any]:
        user = None if req.user_id is None else data.get_user(req.db, req.user_id)
        return {"user_login": None if user is None else user.login}

    # -- user controller -------------------------------------------------------------------

    def user_login(self, req: Request) -> Response:
        if req.method == "GET":
            return self.render(req, "user/login.html", login="")
        login = req.field("login")
        password = req.field("password", strip=False)
        attempt = self.throttle.begin(req.remote_addr, login)
        if attempt.retry_after:
            return self.login_refused(req, "user/login.html", attempt, login=login)
        self.throttle.wait(attempt)  # before the database is read: holds no connection
        user = data.get_user_by_login(req.db, login) if login else None
        ok = verify_password(password, user.password if user else DUMMY_HASH) and user is not None
        if not ok or user is None:
            self.throttle.failed(attempt)
            return self.render(req, "user/login.html", status=401, login=login,
                               errors=["Invalid username or password."])
        self.throttle.succeeded(attempt)
        self.start_login(req, user.id)
        return redirect(req.url("peer/list"))

    def user_logout(self, req: Request) -> Response:
        self.end_login(req)
        return redirect(req.url("user/login"))

    def user_add(self, req: Request) -> Response:
        if req.method == "GET":
            return self.render(req, "user/add.html", new_login="")
        login = req.field("new_login")
        errors = [e for e in (
            validate_name(login, "Username"),
            validate_new_password(req.field("new_password", False), req.field("confirm_password", False),
                                  self.config.password_min_length),
        ) if e]
        if not errors:
            try:
                user = data.create_user(req.db, login, hash_password(req.field("new_password", False)))
            except data.DataError as exc:
                errors.append(str(exc))
        if errors:
            return self.render(req, "user/add.html", status=400, new_login=login, errors=errors)
        self.start_login(req, user.id)
        req.flash(f"Welcome, {login}! Register your first peer below.")
        return redirect(req.url("peer/list"))

    def user_edit(self, req: Request) -> Response:
        assert req.user_id is not None
        user = data.get_user(req.db, req.user_id)
        assert user is not None
        if req.method == "GET":
            return self.render(req, "user/edit.html", new_login=user.login)
        login = req.field("new_login")
        new_pw, confirm = req.field("new_password", False), req.field("confirm_password", False)
        errors = []
        if not verify_password(req.field("old_password", False), user.password):
            errors.append("Password verification failed.")
        if err := validate_name(login, "Username"):
            errors.append(err)
        if new_pw or confirm:
            if err := validate_new_password(new_pw, confirm, self.config.password_min_length):
                errors.append(err)
        if not errors:
            try:
                data.update_user(req.db, user, login, hash_password(new_pw) if new_pw else None)
            except data.DataError as exc:
                errors.append(str(exc))
        if errors:
            return self.render(req, "user/edit.html", status=400, new_login=login, errors=errors)
        req.flash("Account updated.")
        return redirect(req.url("peer/list"))

    def user_delete(self, req: Request) -> Response:
        assert req.user_id is not None
        user = data.get_user(req.db, req.user_id)
        assert user is not None
        if not verify_password(req.field("password", False), user.password):
            return self.render(req, "user/edit.html", status=400, new_login=user.login,
                               errors=["Password verification failed; the account was not deleted."])
        data.delete_user(req.db, user.id)
        self.store.drop_user(user.id)
        self.end_login(req)
        return redirect(req.url("user/login"))

    def user_help(self, req: Request) -> Response:
        setup, errors = (None, []) if req.user_id is None else self._swanctl_setup(req)
        return self.render(req, "user/help.html", ms_address=self.config.ms_address,
                           ms_port=self.config.ms_port, ms_pem=self.ms_pem,
                           ms_keyid=self.ms_keyid, setup=setup, errors=errors)

    def _swanctl_setup(self, req: Request) -> tuple[dict[str, Any], list[str]]:
        """The Help page's strongSwan section: for the selected peer (``?peer=ID``) its swanctl.conf
        and key files, with the subnets behind each peer from the ``net_<ID>`` fields (GET, nothing is
        stored)."""
        assert req.user_id is not None
        own = list(data.list_peers(req.db, req.user_id))
        setup: dict[str, Any] = {"peers": [], "me": None}
        if not own:
            return setup, []
        by_id = {p.id: p for p in own}
        wanted = req.query.get("peer", "")
        me = by_id.get(int(wanted)) if wanted.isascii() and wanted.isdigit() and len(wanted) < 18 else None
        if me is None:
            me = own[0]
        # the peers `me` may reach: its access list (any owner) or all the user's other peers, each of
        # which must in turn accept `me` (the server checks both directions, see the access page)
        targets = list(data.list_grants(req.db, me.id)) if data.is_restricted(req.db, me.id) else \
            [p for p in own if p.id != me.id]
        targets = [t for t in targets if data.peer_may_mediate(req.db, t.id, me.id)]
        foreign = [t for t in targets if t.user_id != req.user_id]
        listed = own + foreign
        names = dict(zip([p.id for p in listed], conn_names(
            [p.alias for p in own] + [f"peer-{p.keyid.hex()[:8]}" for p in foreign]), strict=True))
        errors: list[str] = []
        subnets: dict[int, tuple[str, ...]] = {}
        for p in listed:
            nets, err = parse_subnets(req.query.get(f"net_{p.id}", "")[:1000])
            if err:
                errors.append(f"{names[p.id]}: {err}")
            subnets[p.id] = nets
        setup["peers"] = [{"id": p.id, "name": names[p.id], "own": p.user_id == req.user_id,
                           "net": req.query.get(f"net_{p.id}", "")[:1000], "keyid": p.keyid} for p in listed]
        setup["me"] = {"id": me.id, "name": names[me.id], "keyid": me.keyid}
        setup["reach"] = [names[t.id] for t in targets]
        setup["missing_subnets"] = not subnets[me.id] or any(not subnets[t.id] for t in targets)
        if self.ms_keyid is None or self.ms_pem is None:
            return setup, errors
        snippet = [SnippetPeer(names[p.id], p.keyid, subnets[p.id]) for p in [me, *targets]]
        setup["conf"] = swanctl_conf(snippet[0], snippet[1:], self.config.ms_address, self.config.ms_port,
                                     self.ms_keyid)
        setup["files"] = [{"name": SERVER_KEY_FILE, "what": "the mediation server's public key",
                           "pem": self.ms_pem}] + [
            {"name": f"{names[p.id]}.pem", "what": "this peer's public key" if p is me else "its peer's public key",
             "pem": pem_from_spki(p.public_key)} for p in [me, *targets]]
        return setup, errors

    # -- peer controller -------------------------------------------------------------------

    @staticmethod
    def _id_or_404(text: str) -> int:
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise HTTPError(404, "Peer not found.")
        return int(text)

    def _peer_or_404(self, req: Request) -> Peer:
        assert req.user_id is not None
        if len(req.args) != 1:
            raise HTTPError(404, "Peer not found.")
        peer = data.get_peer(req.db, req.user_id, self._id_or_404(req.args[0]))
        if peer is None:  # missing or someone else's: indistinguishable
            raise HTTPError(404, "Peer not found.")
        return peer

    def peer_list(self, req: Request) -> Response:
        assert req.user_id is not None
        counts = data.grant_counts(req.db, req.user_id)
        rows = [
            {"id": p.id, "alias": p.alias, "keyid": p.keyid,
             "since": p.created.strftime("%Y-%m-%d %H:%M UTC"), "kind": key_description(p.public_key),
             "grants": counts.get(p.id)}  # None: may reach every peer
            for p in data.list_peers(req.db, req.user_id)
        ]
        return self.render(req, "peer/list.html", peers=rows)

    def _peer_form(self, req: Request) -> tuple[str, str, list[str], tuple[bytes, bytes] | None]:
        alias, pem = req.field("alias"), req.field("public_key")
        errors: list[str] = []
        if err := validate_name(alias, "Alias"):
            errors.append(err)
        parsed = None
        try:
            parsed = parse_peer_public_key(pem)
        except KeyError_ as exc:
            errors.append(str(exc))
            if "PRIVATE KEY" in pem:  # never sent back to the browser
                pem = ""
        return alias, pem, errors, parsed

    def peer_add(self, req: Request) -> Response:
        assert req.user_id is not None
        if req.method == "GET":
            return self.render(req, "peer/add.html", alias="", public_key="")
        alias, pem, errors, parsed = self._peer_form(req)
        if not errors and parsed is not None:
            try:
                peer = data.add_peer(req.db, req.user_id, alias, parsed[0], parsed[1])
            except data.DataError as exc:
                errors.append(str(exc))
            else:
                req.flash(f"Peer {peer.alias} added, identity {keyid_text(peer.keyid)}.")
                return redirect(req.url("peer/list"))
        return self.render(req, "peer/add.html", status=400, alias=alias, public_key=pem, errors=errors)

    def peer_edit(self, req: Request) -> Response:
        peer = self._peer_or_404(req)
        info = {"id": peer.id, "keyid": peer.keyid,
                "since": peer.created.strftime("%Y-%m-%d %H:%M UTC"),
                "grants": len(data.list_grants(req.db, peer.id)) if data.is_restricted(req.db, peer.id) else None}
        if req.method == "GET":
            return self.render(req, "peer/edit.html", peer=info, alias=peer.alias,
                               public_key=pem_from_spki(peer.public_key))
        alias, pem, errors, parsed = self._peer_form(req)
        if not errors and parsed is not None:
            try:
                data.update_peer(req.db, peer, alias, parsed[0], parsed[1])
            except data.DataError as exc:
                errors.append(str(exc))
            else:
                req.flash(f"Peer {alias} saved.")
                return redirect(req.url("peer/list"))
        return self.render(req, "peer/edit.html", status=400, peer=info, alias=alias, public_key=pem,
                           errors=errors)

    def _keyid_targets(self, req: Request, peer: Peer, text: str) -> tuple[list[Peer], list[str]]:
        """Peers named by ID_KEY_ID in the access form (any owner: the keyid is the explicit way to
        name another user's peer), and the errors to show."""
        found: list[Peer] = []
        errors: list[str] = []
        tokens = [t for t in _KEYID_SEP.split(text) if t]
        if len(tokens) > MAX_KEYIDS:
            return [], [f"Too many ID_KEY_IDs (at most {MAX_KEYIDS} at a time)."]
        for token in tokens:
            shown = token if len(token) <= 80 else token[:80] + "\u2026"
            try:
                keyid = parse_keyid(token)
            except ValueError:
                keyid = b""
            if len(keyid) != KEYID_LEN:
                errors.append(f"\u201c{shown}\u201d is not an ID_KEY_ID: expected {KEYID_LEN} bytes as "
                              "keyid:# and 40 hex digits, or in colon-separated hex, e.g. "
                              "keyid:#ed90e6\u20262629 or ed:90:e6:\u2026:26:29.")
                continue
            target = data.find_peer_by_keyid(req.db, keyid)
            if target is None:
                errors.append(f"{keyid_text(keyid)}: No peer with this ID_KEY_ID is registered.")
            elif target.id == peer.id:
                errors.append(f"{keyid_text(keyid)} is this peer itself; it does not need to be listed.")
            else:
                found.append(target)
        return found, errors

    def peer_access(self, req: Request) -> Response:
        """Who this peer may reach: everyone (no grant rows) or only the listed peers."""
        assert req.user_id is not None
        peer = self._peer_or_404(req)
        own = [p for p in data.list_peers(req.db, req.user_id) if p.id != peer.id]
        granted = data.list_grants(req.db, peer.id)
        # other users' peers appear only once granted (they were named by ID_KEY_ID): keyid, no alias
        foreign = [p for p in granted if p.user_id != req.user_id]
        selectable = {p.id for p in own} | {p.id for p in foreign}
        info = {"id": peer.id, "alias": peer.alias, "keyid": peer.keyid}

        def page(status: int, scope: str, checked: set[int], add_keyids: str, errors: list[str]) -> Response:
            return self.render(
                req, "peer/access.html", status=status, peer=info, scope=scope, add_keyids=add_keyids,
                errors=errors,
                own=[{"id": p.id, "alias": p.alias, "keyid": p.keyid, "checked": p.id in checked}
                     for p in own],
                foreign=[{"id": p.id, "keyid": p.keyid, "checked": p.id in checked}
                         for p in foreign],
            )

        if req.method == "GET":
            scope = "listed" if data.is_restricted(req.db, peer.id) else "all"
            return page(200, scope, {p.id for p in granted}, "", [])
        checked: set[int] = set()
        for name in req.form:
            if name.startswith("target_"):
                tid = self._id_or_404(name[len("target_"):])
                if tid not in selectable:  # someone else's peer, or none at all: indistinguishable
                    raise HTTPError(404, "Peer not found.")
                checked.add(tid)
        scope = req.field("scope")
        add_keyids = req.field("add_keyids")
        errors: list[str] = []
        targets: set[int] = set()
        if scope == "listed":
            named, errors = self._keyid_targets(req, peer, add_keyids)
            targets = checked | {p.id for p in named}
            if not targets and not errors:
                errors.append("Select at least one peer, or choose \u201cevery registered peer\u201d.")
        elif scope != "all":
            errors.append("Choose who this peer may reach.")
        if not errors:
            try:
                data.set_grants(req.db, peer.id, targets)
            except data.DataError as exc:
                errors.append(str(exc))
        if errors:
            return page(400, scope, checked, add_keyids, errors)
        if targets:
            n = len(targets)
            req.flash(f"Peer {peer.alias} may now reach only {n} listed peer{'s' if n != 1 else ''}.")
        else:
            req.flash(f"Peer {peer.alias} may now reach every registered peer.")
        return redirect(req.url("peer/list"))

    def peer_delete(self, req: Request) -> Response:
        peer = self._peer_or_404(req)
        alias = peer.alias
        data.delete_peer(req.db, peer.user_id, peer.id)
        req.flash(f"Peer {alias} deleted.")
        return redirect(req.url("peer/list"))


def create_app(db: str | sessionmaker[Session] | None = None,
               config: ServerManagerConfig | None = None, *, init_db: bool = True,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> ServerManager:
    """WSGI app factory.  ``db`` is a database URL or a ready session factory; ``clock`` (monotonic
    seconds) and ``sleep`` drive session expiry and login throttling."""
    if db is None or isinstance(db, str):
        engine = make_engine(db)
        if init_db:
            create_all(engine)
        factory = make_session_factory(engine)
    else:
        factory = db
    return ServerManager(factory, config or ServerManagerConfig(), clock=clock, sleep=sleep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medmgr-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_version_argument(p)
    p.add_argument("--ms-address", default="mediation.example.net", help="mediation server host name/address")
    p.add_argument("--ms-port", type=int, default=500, help="mediation server IKE port")
    p.add_argument("--ms-public-key", metavar="FILE",
                   help="mediation server public key (PEM public key or certificate, or OpenSSH line)")
    p.add_argument("--password-min-length", type=int, default=8)
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
