"""Client manager portal: this client's key pair, its mediation server, and its connections.

A single administrator logs in with the password whose hash is configured at setup:
``python -m medmgr_web.client_manager hash-password > /etc/ikeme/client-admin.hash`` (reads the
password from stdin), then start with ``--admin-hash-file /etc/ikeme/client-admin.hash``.

Pages: user (login, logout), key (show, generate, download), server (edit),
connection (list, add, edit/<id>, delete/<id>, up/<id>, down/<id>).  The private key lives in the
client database (SQLite file mode 0600) and is never shown.

With ``--daemon-socket PATH`` every saved change (key pair, server, connection added, edited or
deleted) is followed by a ``reload`` on the mediation client's control socket (the JSON-line
protocol of ``ikectl``), so the daemon picks it up at once; when that fails the change stays saved
and the page says why the daemon was not reloaded.  The same socket answers the connection list's
live columns (``status``: each connection's path, direct or relayed, and this client's NAT behaviour)
and its Connect / Disconnect buttons (``up`` / ``down`` of the connection), whose answer or error the
page shows.
"""

from __future__ import annotations

import getpass
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Response, abort, current_app, flash, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session, sessionmaker

from core_ike.daemon.ctl import call as control_call
from med_db import data
from med_db.keyid import keyid_text, pem_from_spki
from med_db.models import STATUS_NAMES, Connection
from medmgr_web import forms
from medmgr_web import portal as web
from medmgr_web import validation as v
from medmgr_web.launcher import portal_parser, serve, throttle_config
from medmgr_web.security import hash_password, needs_rehash, verify_password
from medmgr_web.throttle import ThrottleConfig

log = logging.getLogger("medmgr_web.client_manager")
ADMIN_ID = 1
ADMIN_KEY = "admin"


@dataclass
class ClientManagerConfig:
    admin_password_hash: str
    session_timeout: float = 900.0
    max_sessions: int = 10_000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    refresh_seconds: int = 10
    daemon_socket: str | None = None  # the mediation client's control socket: reload after a save
    daemon_timeout: float = 10.0      # seconds to wait for its answer
    admin_hash_file: str | None = None  # where the hash came from, for the log


def _cfg() -> ClientManagerConfig:
    return cast(ClientManagerConfig, current_app.extensions["medcli"])


def _daemon(req: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """A request on the mediation client's control socket: (its answer, "") or (None, why not)."""
    path = _cfg().daemon_socket
    if not path:
        return None, "no --daemon-socket configured for this portal"
    try:
        return control_call(path, req, timeout), ""
    except FileNotFoundError:
        return None, f"no control socket at {path} (is the mediation client running?)"
    except ConnectionRefusedError:
        return None, f"nothing listens on {path} (is the mediation client running?)"
    except TimeoutError:
        return None, f"no answer from {path} within {timeout:g} s"
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except ValueError:
        return None, f"the answer on {path} was not understood"


def _path(selected: str | None) -> str:
    """direct / relayed from the selected candidate pair (its text names the endpoint types:
    core_ike.me.checklist.PairInfo; a RELAYED remote goes through the server's relay)."""
    if not selected:
        return ""
    return "relayed" if "RELAYED" in selected else "direct"


def _live() -> tuple[dict[str, dict[str, str]], str, str]:
    """Per connection alias its live state and path, this client's NAT behaviour, and why the daemon
    could not be asked (empty when it answered).

    The path is read from the tunnel itself where there is one: the server's relay ports are on the
    address of the mediation SA (docs/protocol.md §11.1), so a mediated IKE_SA with that remote address
    is relayed, any other direct; this holds whichever side initiated. Without a tunnel listed, the
    pair our own attempt selected tells it."""
    reply, why = _daemon({"cmd": "status"}, STATUS_TIMEOUT)
    if reply is None:
        return {}, "", why
    if not reply.get("ok"):
        return {}, "", str(reply.get("error") or "the mediation client answered with an error")
    st = reply.get("status") or {}
    conns = {str(c.get("name")): {"state": str(c.get("state") or ""), "path": _path(c.get("selected")),
                                  "reason": str(c.get("reason") or "")}
             for c in st.get("connections") or [] if isinstance(c, dict)}
    servers = {str(m["remote"][0]) for m in st.get("mediation") or []
               if isinstance(m, dict) and isinstance(m.get("remote"), list) and m["remote"]}
    listing, _ = _daemon({"cmd": "list"}, STATUS_TIMEOUT)
    for sa in (listing or {}).get("sas") or []:
        if isinstance(sa, dict) and sa.get("child-sas") and sa.get("remote-host"):
            entry = conns.setdefault(str(sa.get("name")), {"state": "established", "path": "", "reason": ""})
            entry["path"] = "relayed" if str(sa["remote-host"]) in servers else "direct"
    nat = st.get("nat")
    return conns, str(nat.get("summary") or "") if isinstance(nat, dict) else "", ""


STATUS_TIMEOUT = 2.0  # the connection list waits this long for the daemon's status
UP_TIMEOUT = 30  # seconds the daemon may take to bring a connection up (mediation, checks, IKE)


def saved(message: str) -> None:
    """A change is saved: tell the user, and have the mediation client reload its configuration."""
    cfg = _cfg()
    path = cfg.daemon_socket
    if not path:
        flash(message)
        return
    web.db().commit()  # the daemon reads the database: the change must be there before it reloads
    timeout = cfg.daemon_timeout
    try:
        reply = control_call(path, {"cmd": "reload"}, timeout)
    except FileNotFoundError:
        reason = f"no control socket at {path} (is the mediation client running?)"
    except ConnectionRefusedError:
        reason = f"nothing listens on {path} (is the mediation client running?)"
    except TimeoutError:
        reason = f"no answer from {path} within {timeout:g} s"
    except OSError as exc:
        reason = f"{path}: {exc.strerror or exc}"
    except ValueError:
        reason = f"the answer on {path} was not understood"
    else:
        if reply.get("ok"):
            restart = reply.get("restart-needed") or []
            flash(f"{message} The mediation client reloaded its configuration"
                  + (f"; a restart is needed for: {', '.join(map(str, restart))}." if restart else "."))
            return
        reason = str(reply.get("error") or "it answered with an error")
    log.warning("mediation client not reloaded: %s", reason)
    flash(f"{message.rstrip('.')} \u2014 saved; the mediation client was not reloaded: {reason}")


# -- user ---------------------------------------------------------------------------------------------


def user_login() -> ResponseReturnValue:
    form = forms.AdminLoginForm()
    if request.method == "GET":
        return web.render("user/login.html", form=form)
    app, cfg = web.portal(), _cfg()
    attempt = app.throttle.begin(request.remote_addr or "", ADMIN_KEY)
    if attempt.retry_after:
        return web.login_refused("user/login.html", attempt, form=form)
    app.throttle.wait(attempt)
    if not verify_password(form.password.data or "", cfg.admin_password_hash):
        app.throttle.failed(attempt)
        return web.render("user/login.html", status=401, form=form, errors=["Invalid password."])
    app.throttle.succeeded(attempt)
    if needs_rehash(cfg.admin_password_hash):
        # the hash is the administrator's file, which this portal does not write
        log.warning("the admin password hash in %s is not Argon2id; renew it with `medmgr-client "
                    "hash-password`", cfg.admin_hash_file or "the configuration")
    web.login_user(ADMIN_ID)
    return web.redirect("connection_list")


def user_logout() -> ResponseReturnValue:
    web.logout_user()
    return web.redirect("user_login")


# -- key ----------------------------------------------------------------------------------------------


def _key_info() -> dict[str, Any] | None:
    cfg = data.get_client_config(web.db())
    if cfg is None:
        return None
    return {"pem": pem_from_spki(cfg.public_key), "keyid": cfg.keyid,
            "created": cfg.created.strftime("%Y-%m-%d %H:%M UTC")}


def key_show() -> ResponseReturnValue:
    return web.render("key/show.html", key=_key_info())


def key_download() -> ResponseReturnValue:
    cfg = data.get_client_config(web.db())
    if cfg is None:
        abort(404, "No key pair yet.")
    resp = Response(pem_from_spki(cfg.public_key), content_type="application/x-pem-file")
    resp.headers["Content-Disposition"] = f'attachment; filename="client-{cfg.keyid.hex()[:8]}.pub.pem"'
    return resp


def key_generate() -> ResponseReturnValue:
    form = forms.KeyForm()
    db = web.db()
    if data.get_client_config(db) is not None and form.replace.data != "yes":
        return web.render("key/show.html", status=400, key=_key_info(), errors=[
            "A key pair exists already. Tick \u201cReplace the existing key\u201d to generate a new one "
            "(the old identity stops working everywhere it is registered)."])
    cfg = data.generate_client_key(db)
    saved(f"New 2048-bit RSA key pair generated; identity {keyid_text(cfg.keyid)}.")
    return web.redirect("key_show")


# -- server -------------------------------------------------------------------------------------------


def server_edit() -> ResponseReturnValue:
    db = web.db()
    cfg = data.get_server_config(db)
    form = forms.ServerForm()
    if request.method == "GET":
        if cfg is not None:
            form.address.data, form.port.data = cfg.address, str(cfg.port)
            form.public_key.data = pem_from_spki(cfg.public_key)
        else:
            form.port.data = "500"
        return web.render("server/edit.html", form=form, keyid=cfg.keyid if cfg else None)
    if not form.validate() or form.public_key.parsed is None:
        return web.render("server/edit.html", status=400, form=form, keyid=None)
    port, _ = v.parse_port(form.port.data or "500")
    spki, keyid = form.public_key.parsed
    data.set_server_config(db, form.address.data or "", port, spki, keyid)
    saved("Mediation server saved.")
    return web.redirect("connection_list")


# -- connection ---------------------------------------------------------------------------------------


def _conn_or_404(ident: str) -> Connection:
    cid = v.parse_id(ident)
    conn = None if cid is None else data.get_connection(web.db(), cid)
    if conn is None:
        abort(404, "Connection not found.")
    return conn


def connection_list() -> ResponseReturnValue:
    db = web.db()
    live, nat, daemon_error = _live()
    rows = [
        {"id": c.id, "alias": c.alias, "keyid": c.keyid, "active": c.active,
         "local": c.local_subnet or "dynamic", "remote": c.remote_subnet or "dynamic",
         "status": STATUS_NAMES.get(c.status, str(c.status)),
         "changed": c.status_changed.strftime("%Y-%m-%d %H:%M:%S UTC") if c.status_changed else "\u2014",
         "error": c.last_error, "path": live.get(c.alias, {}).get("path", "")}
        for c in data.list_connections(db)
    ]
    return web.render("connection/list.html", connections=rows, has_key=data.get_client_config(db) is not None,
                      has_server=data.get_server_config(db) is not None, refresh=_cfg().refresh_seconds,
                      nat=nat, daemon_error=daemon_error, daemon=bool(_cfg().daemon_socket))


def _control_action(ident: str, up: bool) -> ResponseReturnValue:
    """Connect / Disconnect: ``up`` or ``down`` of the connection on the daemon's control socket; the
    answer (or why there was none) is the next page's notice."""
    conn = _conn_or_404(ident)
    if up:
        reply, why = _daemon({"cmd": "up", "conn": conn.alias, "timeout": UP_TIMEOUT}, UP_TIMEOUT + 5)
    else:
        reply, why = _daemon({"cmd": "down", "ike": conn.alias}, 15)
    if reply is None:
        flash(f"{conn.alias}: not {'connected' if up else 'disconnected'}: {why}")
    elif reply.get("ok"):
        done = reply.get("done") or reply.get("established") or []
        detail = f" ({'; '.join(map(str, done))})" if isinstance(done, list) and done else ""
        flash(f"{conn.alias}: {'connected' if up else 'disconnected'}{detail}.")
    else:
        flash(f"{conn.alias}: the mediation client answered: {reply.get('error') or 'an error'}")
    return web.redirect("connection_list")


def connection_up(ident: str) -> ResponseReturnValue:
    return _control_action(ident, True)


def connection_down(ident: str) -> ResponseReturnValue:
    return _control_action(ident, False)


def _save_connection(form: forms.ConnectionForm, conn: Connection | None) -> tuple[str | None, list[str]]:
    """Validate and store; (the saved alias or None, errors for the top of the page)."""
    if not form.validate() or form.public_key.parsed is None:
        return None, []
    spki, keyid = form.public_key.parsed
    alias = form.alias.data or ""
    try:
        data.save_connection(web.db(), conn, alias=alias, spki=spki, keyid=keyid,
                             local_subnet=v.parse_subnet(form.local_subnet.data or "", "")[0],
                             remote_subnet=v.parse_subnet(form.remote_subnet.data or "", "")[0],
                             active=bool(form.active.data))
    except data.DataError as exc:
        return None, [str(exc)]
    return alias, []


def connection_add() -> ResponseReturnValue:
    form = forms.ConnectionForm()
    if request.method == "GET":
        return web.render("connection/add.html", form=form)
    alias, errors = _save_connection(form, None)
    if alias is not None:
        saved(f"Connection {alias} added.")
        return web.redirect("connection_list")
    return web.render("connection/add.html", status=400, form=form, errors=errors)


def connection_edit(ident: str) -> ResponseReturnValue:
    conn = _conn_or_404(ident)
    info = {"id": conn.id, "keyid": conn.keyid, "status": conn.status_name, "error": conn.last_error,
            "alias": conn.alias}
    form = forms.ConnectionForm()
    if request.method == "GET":
        form.alias.data, form.public_key.data = conn.alias, pem_from_spki(conn.public_key)
        form.local_subnet.data, form.remote_subnet.data = conn.local_subnet or "", conn.remote_subnet or ""
        form.active.data = conn.active
        return web.render("connection/edit.html", form=form, conn=info)
    alias, errors = _save_connection(form, conn)
    if alias is not None:
        saved(f"Connection {alias} saved.")
        return web.redirect("connection_list")
    return web.render("connection/edit.html", status=400, form=form, conn=info, errors=errors)


def connection_delete(ident: str) -> ResponseReturnValue:
    conn = _conn_or_404(ident)
    alias = conn.alias
    data.delete_connection(web.db(), conn.id)
    saved(f"Connection {alias} deleted.")
    return web.redirect("connection_list")


_GET_POST = ["GET", "POST"]
ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/user/login", user_login, _GET_POST),
    ("/user/logout", user_logout, ["POST"]),
    ("/key/show", key_show, ["GET"]),
    ("/key/generate", key_generate, ["POST"]),
    ("/key/download", key_download, ["GET"]),
    ("/server/edit", server_edit, _GET_POST),
    ("/connection/list", connection_list, ["GET"]),
    ("/connection/add", connection_add, _GET_POST),
    ("/connection/edit/<ident>", connection_edit, _GET_POST),
    ("/connection/delete/<ident>", connection_delete, ["POST"]),
    ("/connection/up/<ident>", connection_up, ["POST"]),
    ("/connection/down/<ident>", connection_down, ["POST"]),
]


def create_app(db: str | sessionmaker[Session] | None, config: ClientManagerConfig,
               *, init_db: bool = True, clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep) -> web.Portal:
    """WSGI app factory.  ``db`` is a database URL or a ready session factory; ``clock`` (wall-clock
    seconds) and ``sleep`` drive session expiry and login throttling."""
    factory = web.session_factory(db, init_db=init_db)
    settings = web.PortalSettings(
        name="medcli", title="Mediation Client", templates="client/", login_endpoint="user_login",
        home_endpoint="connection_list", public=frozenset({"user_login"}),
        session_timeout=config.session_timeout, max_sessions=config.max_sessions, throttle=config.throttle)
    app = web.make_portal(__name__, settings, factory, clock=clock, sleep=sleep)
    app.extensions["medcli"] = config
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view.__name__, view, methods=methods)
    return app


def _hash_password_cmd() -> int:
    if sys.stdin.isatty():
        pw = getpass.getpass("Admin password: ")
        if pw != getpass.getpass("Again: "):
            print("passwords differ", file=sys.stderr)
            return 1
    else:
        pw = sys.stdin.readline().rstrip("\n")
    if len(pw) < 8:
        print("password requires at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["hash-password"]:
        return _hash_password_cmd()
    p = portal_parser("medmgr-client", __doc__)
    p.add_argument("--admin-hash-file", required=True, metavar="FILE",
                   help="file holding the admin password's hash (see hash-password)")
    p.add_argument("--refresh", type=int, default=10, help="status page refresh interval, seconds")
    p.add_argument("--daemon-socket", metavar="PATH", default=None,
                   help="the mediation client's control socket ([daemon] control): reload it after every save")
    args = p.parse_args(args_in)
    with open(args.admin_hash_file, encoding="ascii") as f:
        admin_hash = f.read().strip()
    cfg = ClientManagerConfig(
        admin_password_hash=admin_hash, session_timeout=args.session_timeout, max_sessions=args.max_sessions,
        throttle=throttle_config(args), refresh_seconds=args.refresh, daemon_socket=args.daemon_socket,
        admin_hash_file=args.admin_hash_file,
    )
    serve(create_app(args.db, cfg), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
