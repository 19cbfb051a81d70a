"""Client manager portal: this client's key pair, its mediation server, and its connections.

A single administrator logs in with the password whose scrypt hash is configured at setup:
``python -m medmgr_web.client_manager hash-password > /etc/ikeme/client-admin.hash`` (reads the
password from stdin), then start with ``--admin-hash-file /etc/ikeme/client-admin.hash``.

Controllers: user (login, logout), key (show, generate), server (edit),
connection (list, add, edit/<id>, delete/<id>).  The private key lives in the client database
(SQLite file mode 0600) and is never shown.

With ``--daemon-socket PATH`` every saved change (key pair, server, connection added, edited or
deleted) is followed by a ``reload`` on the mediation client's control socket (the JSON-line
protocol of ``ikectl``), so the daemon picks it up at once; when that fails the change stays saved
and the page says why the daemon was not reloaded.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core_ike.daemon.ctl import call as control_call
from core_ike.version import add_version_argument
from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import KeyError_, keyid_text, parse_peer_public_key, pem_from_spki
from med_db.models import STATUS_NAMES, Connection
from medmgr_web.launcher import add_common_args, serve, throttle_config
from medmgr_web.security import SessionStore, hash_password, verify_password
from medmgr_web.throttle import LoginThrottle, ThrottleConfig
from medmgr_web.web import HTTPError, PortalApp, Request, Response, redirect

log = logging.getLogger("medmgr_web.client_manager")
ALIAS_RE = re.compile(r"[A-Za-z0-9\-_@.]{1,64}")
HOST_RE = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")
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


def parse_subnet(value: str, what: str) -> tuple[str | None, str | None]:
    """(normalized CIDR or None, error message or None).  Empty = dynamic (the tunnel address)."""
    if not value:
        return None, None
    try:
        return str(ipaddress.ip_network(value, strict=False)), None
    except ValueError:
        return None, f"{what} is not a valid subnet in CIDR notation (e.g. 10.1.0.0/24)."


class ClientManager(PortalApp):
    cookie_name = "medcli_sid"
    csrf_cookie_name = "medcli_csrf"
    templates_prefix = "client/"
    title = "Mediation Client"

    def __init__(self, session_factory: sessionmaker[Session], config: ClientManagerConfig, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(session_factory, SessionStore(config.session_timeout, config.max_sessions, clock),
                         LoginThrottle(config.throttle, clock, sleep), "user/login", "connection/list")
        self.config = config
        r = self.route
        r("user", "login", self.user_login, public=True)
        r("user", "logout", self.user_logout, methods=("POST",))
        r("key", "show", self.key_show, methods=("GET",))
        r("key", "generate", self.key_generate, methods=("POST",))
        r("server", "edit", self.server_edit)
        r("connection", "list", self.connection_list, methods=("GET",))
        r("connection", "add", self.connection_add)
        r("connection", "edit", self.connection_edit)
        r("connection", "delete", self.connection_delete, methods=("POST",))

    def saved(self, req: Request, message: str) -> None:
        """A change is saved: tell the user, and have the mediation client reload its configuration."""
        path = self.config.daemon_socket
        if not path:
            req.flash(message)
            return
        req.db.commit()  # the daemon reads the database: the change must be there before it reloads
        timeout = self.config.daemon_timeout
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
                req.flash(f"{message} The mediation client reloaded its configuration"
                          + (f"; a restart is needed for: {', '.join(map(str, restart))}." if restart else "."))
                return
            reason = str(reply.get("error") or "it answered with an error")
        log.warning("mediation client not reloaded: %s", reason)
        req.flash(f"{message.rstrip('.')} \u2014 saved; the mediation client was not reloaded: {reason}")

    # -- user ------------------------------------------------------------------------------

    def user_login(self, req: Request) -> Response:
        if req.method == "GET":
            return self.render(req, "user/login.html")
        attempt = self.throttle.begin(req.remote_addr, ADMIN_KEY)
        if attempt.retry_after:
            return self.login_refused(req, "user/login.html", attempt)
        self.throttle.wait(attempt)
        if not verify_password(req.field("password", False), self.config.admin_password_hash):
            self.throttle.failed(attempt)
            return self.render(req, "user/login.html", status=401, errors=["Invalid password."])
        self.throttle.succeeded(attempt)
        self.start_login(req, ADMIN_ID)
        return redirect(req.url("connection/list"))

    def user_logout(self, req: Request) -> Response:
        self.end_login(req)
        return redirect(req.url("user/login"))

    # -- key -------------------------------------------------------------------------------

    def key_show(self, req: Request) -> Response:
        cfg = data.get_client_config(req.db)
        info = None
        if cfg is not None:
            info = {"pem": pem_from_spki(cfg.public_key), "keyid": cfg.keyid,
                    "created": cfg.created.strftime("%Y-%m-%d %H:%M UTC")}
        return self.render(req, "key/show.html", key=info)

    def key_generate(self, req: Request) -> Response:
        if data.get_client_config(req.db) is not None and req.field("replace") != "yes":
            return self.render(req, "key/show.html", status=400, key=None, errors=[
                "A key pair exists already. Tick \u201cReplace the existing key\u201d to generate a new one "
                "(the old identity stops working everywhere it is registered)."])
        cfg = data.generate_client_key(req.db)
        self.saved(req, f"New 2048-bit RSA key pair generated; identity {keyid_text(cfg.keyid)}.")
        return redirect(req.url("key/show"))

    # -- server ----------------------------------------------------------------------------

    def server_edit(self, req: Request) -> Response:
        cfg = data.get_server_config(req.db)
        if req.method == "GET":
            return self.render(req, "server/edit.html", address=cfg.address if cfg else "",
                               port=str(cfg.port) if cfg else "500",
                               public_key=pem_from_spki(cfg.public_key) if cfg else "",
                               keyid=cfg.keyid if cfg else None)
        address, port_text, pem = req.field("address"), req.field("port") or "500", req.field("public_key")
        errors: list[str] = []
        if not address:
            errors.append("Server address is missing.")
        elif HOST_RE.fullmatch(address) is None:
            errors.append("Server address invalid: use a host name or an IP address.")
        port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
        if not 1 <= port <= 65535:
            errors.append("Port must be a number between 1 and 65535.")
        parsed = None
        try:
            parsed = parse_peer_public_key(pem)
        except KeyError_ as exc:
            errors.append(str(exc))
            if "PRIVATE KEY" in pem:  # never sent back to the browser
                pem = ""
        if errors or parsed is None:
            return self.render(req, "server/edit.html", status=400, address=address, port=port_text,
                               public_key=pem, keyid=None, errors=errors)
        data.set_server_config(req.db, address, port, parsed[0], parsed[1])
        self.saved(req, "Mediation server saved.")
        return redirect(req.url("connection/list"))

    # -- connection ------------------------------------------------------------------------

    def _conn_or_404(self, req: Request) -> Connection:
        if len(req.args) != 1 or not req.args[0].isdigit() or len(req.args[0]) > 18:
            raise HTTPError(404, "Connection not found.")
        conn = data.get_connection(req.db, int(req.args[0]))
        if conn is None:
            raise HTTPError(404, "Connection not found.")
        return conn

    def connection_list(self, req: Request) -> Response:
        rows = [
            {"id": c.id, "alias": c.alias, "keyid": c.keyid, "active": c.active,
             "local": c.local_subnet or "dynamic", "remote": c.remote_subnet or "dynamic",
             "status": STATUS_NAMES.get(c.status, str(c.status)),
             "changed": c.status_changed.strftime("%Y-%m-%d %H:%M:%S UTC") if c.status_changed else "\u2014",
             "error": c.last_error}
            for c in data.list_connections(req.db)
        ]
        return self.render(req, "connection/list.html", connections=rows,
                           has_key=data.get_client_config(req.db) is not None,
                           has_server=data.get_server_config(req.db) is not None,
                           refresh=self.config.refresh_seconds)

    def _conn_form(self, req: Request) -> tuple[dict[str, Any], list[str], dict[str, Any] | None]:
        form: dict[str, Any] = {k: req.field(k) for k in ("alias", "public_key", "local_subnet", "remote_subnet")}
        form["active"] = req.field("active") == "yes"
        errors: list[str] = []
        if not form["alias"]:
            errors.append("Alias is missing.")
        elif ALIAS_RE.fullmatch(form["alias"]) is None:
            errors.append("Alias invalid, valid characters: A-Z a-z 0-9 - _ @ . (at most 64 characters).")
        parsed = None
        try:
            parsed = parse_peer_public_key(form["public_key"])
        except KeyError_ as exc:
            errors.append(str(exc))
            if "PRIVATE KEY" in form["public_key"]:  # never sent back to the browser
                form["public_key"] = ""
        local, e1 = parse_subnet(form["local_subnet"], "Local subnet")
        remote, e2 = parse_subnet(form["remote_subnet"], "Remote subnet")
        errors += [e for e in (e1, e2) if e]
        if errors or parsed is None:
            return form, errors, None
        values = {"alias": form["alias"], "spki": parsed[0], "keyid": parsed[1], "local_subnet": local,
                  "remote_subnet": remote, "active": form["active"]}
        return form, errors, values

    def connection_add(self, req: Request) -> Response:
        if req.method == "GET":
            empty = {"alias": "", "public_key": "", "local_subnet": "", "remote_subnet": "", "active": True}
            return self.render(req, "connection/add.html", form=empty)
        form, errors, values = self._conn_form(req)
        if values is not None:
            try:
                data.save_connection(req.db, None, **values)
            except data.DataError as exc:
                errors.append(str(exc))
            else:
                self.saved(req, f"Connection {values['alias']} added.")
                return redirect(req.url("connection/list"))
        return self.render(req, "connection/add.html", status=400, form=form, errors=errors)

    def connection_edit(self, req: Request) -> Response:
        conn = self._conn_or_404(req)
        info = {"id": conn.id, "keyid": conn.keyid, "status": conn.status_name,
                "error": conn.last_error}
        if req.method == "GET":
            form = {"alias": conn.alias, "public_key": pem_from_spki(conn.public_key),
                    "local_subnet": conn.local_subnet or "", "remote_subnet": conn.remote_subnet or "",
                    "active": conn.active}
            return self.render(req, "connection/edit.html", conn=info, form=form)
        form, errors, values = self._conn_form(req)
        if values is not None:
            try:
                data.save_connection(req.db, conn, **values)
            except data.DataError as exc:
                errors.append(str(exc))
            else:
                self.saved(req, f"Connection {values['alias']} saved.")
                return redirect(req.url("connection/list"))
        return self.render(req, "connection/edit.html", status=400, conn=info, form=form, errors=errors)

    def connection_delete(self, req: Request) -> Response:
        conn = self._conn_or_404(req)
        alias = conn.alias
        data.delete_connection(req.db, conn.id)
        self.saved(req, f"Connection {alias} deleted.")
        return redirect(req.url("connection/list"))


def create_app(db: str | sessionmaker[Session] | None, config: ClientManagerConfig,
               *, init_db: bool = True, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> ClientManager:
    """WSGI app factory.  ``db`` is a database URL or a ready session factory; ``clock`` (monotonic
    seconds) and ``sleep`` drive session expiry and login throttling."""
    if db is None or isinstance(db, str):
        engine = make_engine(db)
        if init_db:
            create_all(engine)
        factory = make_session_factory(engine)
    else:
        factory = db
    return ClientManager(factory, config, clock=clock, sleep=sleep)


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
    p = argparse.ArgumentParser(prog="medmgr-client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_version_argument(p)
    p.add_argument("--admin-hash-file", required=True, metavar="FILE",
                   help="file holding the admin password's scrypt hash (see hash-password)")
    p.add_argument("--refresh", type=int, default=10, help="status page refresh interval, seconds")
    p.add_argument("--daemon-socket", metavar="PATH", default=None,
                   help="the mediation client's control socket ([daemon] control): reload it after every save")
    args = p.parse_args(args_in)
    with open(args.admin_hash_file, encoding="ascii") as f:
        admin_hash = f.read().strip()
    cfg = ClientManagerConfig(
        admin_password_hash=admin_hash, session_timeout=args.session_timeout, max_sessions=args.max_sessions,
        throttle=throttle_config(args), refresh_seconds=args.refresh, daemon_socket=args.daemon_socket,
    )
    serve(create_app(args.db, cfg), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
