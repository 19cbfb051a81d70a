"""SA manager portal: the IKE_SAs and CHILD_SAs of iked, its connections and virtual IP pools, and the
gateway's SQL configuration (docs/gateway.md, "The SA manager").

Pages (``<base>/<controller>/<action>[/<id>]``), for operators only (``user.admin`` accounts of med_db,
the same accounts and role as the server manager's; ``medmgr-sa --add-operator LOGIN`` makes one):
  user: login, logout
  sa: list, terminate (POST ike=<unique id> [child=<unique id>])
  conn: list, initiate (POST name=<connection>); add, edit/<id>, delete/<id> (rows of peer_configs)
  identity: list, add, delete/<id>        secret: list, add, delete/<id>
  pool: list (with the leases), add, delete/<name>

iked is asked over its control socket (JSON lines, docs/operations.md); the SQL rows are written to
``--config-db``, the database iked reads with ``[daemon] config_db`` and re-reads every 2 s.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from flask import abort, current_app, flash, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core_ike.daemon.ctl import call as ctl_call
from med_db import data
from med_db import presence as pr
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.models import User
from medmgr_web import portal as web
from medmgr_web import sa_config
from medmgr_web import validation as v
from medmgr_web.launcher import portal_parser, serve, throttle_config
from medmgr_web.security import hash_password
from medmgr_web.throttle import ThrottleConfig

DEFAULT_CONTROL = "/run/ikeme/iked.ctl"


class DaemonError(Exception):
    """iked could not be asked, or refused the request (its own words)."""


@dataclass
class SaManagerConfig:
    control: str = DEFAULT_CONTROL
    config_db: str | None = None       # the gateway's SQL configuration; None: no editing pages
    control_timeout: float = 15.0      # seconds for list/conns; up and down add their own wait
    password_min_length: int = 10
    session_timeout: float = 900.0
    max_sessions: int = 10_000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)


@dataclass
class Gateway:
    """What the views reach beyond med_db: iked's control socket and the configuration database."""

    ask: Callable[[dict[str, Any], float], dict[str, Any]]
    config_db: Engine | None


def gateway() -> Gateway:
    return cast(Gateway, current_app.extensions["iksa"])


def ask(req: dict[str, Any], wait: float = 0.0) -> dict[str, Any]:
    """iked's reply to ``req`` (``ok`` true), or DaemonError."""
    cfg = cast(SaManagerConfig, current_app.extensions["iksa_cfg"])
    try:
        reply = gateway().ask(req, cfg.control_timeout + wait)
    except OSError as e:
        raise DaemonError(f"iked cannot be reached at {cfg.control}: {e.strerror or e}") from None
    except ValueError:
        raise DaemonError("iked's reply could not be read") from None
    if not reply.get("ok"):
        raise DaemonError(str(reply.get("error") or "refused"))
    return reply


def _operator_valid(db: Session, uid: int) -> bool:
    user = data.get_user(db, uid)
    return user is not None and user.admin and not user.disabled  # losing the role ends the login


def _context() -> dict[str, Any]:
    uid = web.user_id()
    user = None if uid is None else data.get_user(web.db(), uid)
    return {"user_login": None if user is None else user.login, "editing": gateway().config_db is not None}


# -- user ---------------------------------------------------------------------------------------------


def _login_refusal(user: User) -> str | None:
    if user.disabled or not user.admin:
        return "This account may not manage the gateway; ask an operator."
    return None


def user_login() -> ResponseReturnValue:
    return web.account_login(_login_refusal, "sa_list")


def user_logout() -> ResponseReturnValue:
    web.logout_user()
    return web.redirect("user_login")


# -- sa -----------------------------------------------------------------------------------------------


def _ago(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _bytes(n: Any) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _sa_rows(sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in sas:
        children = [{
            "uniqueid": c.get("uniqueid"), "name": c.get("name"), "state": c.get("state"),
            "proposal": c.get("proposal") or "—", "spis": f"{c.get('spi-in')}_i {c.get('spi-out')}_o",
            "ts": f"{', '.join(c.get('local-ts', []))} === {', '.join(c.get('remote-ts', []))}",
            "bytes_in": _bytes(c.get("bytes-in")), "bytes_out": _bytes(c.get("bytes-out")),
            "packets_in": c.get("packets-in"), "packets_out": c.get("packets-out"),
            "age": _ago(c.get("install-time")), "rekey": _ago(c.get("rekey-time")),
            "encap": c.get("encap"),
        } for c in s.get("child-sas", [])]
        rows.append({
            "uniqueid": s.get("uniqueid"), "name": s.get("name"), "state": s.get("state"),
            "local": f"{s.get('local-host')}[{s.get('local-port')}]",
            "remote": f"{s.get('remote-host')}[{s.get('remote-port')}]",
            "local_id": s.get("local-id"), "remote_id": s.get("remote-id"),
            "vips": [*(s.get("local-vips") or []), *(s.get("remote-vips") or [])],
            "vip_remote": bool(s.get("remote-vips")),
            "proposal": s.get("proposal") or "—", "age": _ago(s.get("established")),
            "rekey": _ago(s.get("rekey-time")), "initiator": s.get("initiator"),
            "nat": s.get("nat-local") or s.get("nat-remote"), "children": children,
        })
    return rows


def sa_list() -> ResponseReturnValue:
    try:
        sas = _sa_rows(ask({"cmd": "list"})["sas"])
    except DaemonError as e:
        return web.render("sa/list.html", status=503, sas=[], errors=[str(e)])
    return web.render("sa/list.html", sas=sas)


def sa_terminate() -> ResponseReturnValue:
    ike = v.parse_id(request.form.get("ike", ""))
    child_text = request.form.get("child", "")
    child = v.parse_id(child_text) if child_text else None
    if ike is None or (child_text and child is None):
        abort(400, "Name the IKE_SA (and CHILD_SA) by unique id.")
    req: dict[str, Any] = {"cmd": "down", "ike": str(ike), "timeout": 10}
    if child is not None:
        req["child"] = str(child)
    try:
        reply = ask(req, wait=10)
    except DaemonError as e:
        flash(f"Not terminated: {e}")
    else:
        flash(f"Terminated {', '.join(reply.get('done', []))}.")
    return web.redirect("sa_list")


# -- conn ---------------------------------------------------------------------------------------------


def conn_list() -> ResponseReturnValue:
    errors: list[str] = []
    try:
        conns = ask({"cmd": "conns"})["conns"]
    except DaemonError as e:
        conns, errors = [], [str(e)]
    rows = [{"name": c["name"], "local_addrs": ", ".join(c.get("local-addrs") or []) or "%any",
             "remote_addrs": ", ".join(c.get("remote-addrs") or []) or "%any",
             "local": f"{c['local']['id']} ({c['local']['auth']})", "remote": f"{c['remote']['id']} ({c['remote']['auth']})",
             "vips": ", ".join(c.get("vips") or []),
             "children": [f"{ch['name']}: {', '.join(ch['local-ts'])} === {', '.join(ch['remote-ts'])}"
                          for ch in c.get("children", [])]} for c in conns]
    stored = sa_config.stored_connections() if gateway().config_db is not None else None
    return web.render("conn/list.html", status=503 if errors else 200, conns=rows, stored=stored, errors=errors)


def conn_initiate() -> ResponseReturnValue:
    name = request.form.get("name", "")
    if (err := v.check_name(name, "Connection")) is not None:
        abort(400, err)
    try:
        reply = ask({"cmd": "up", "conn": name, "timeout": 30}, wait=30)
    except DaemonError as e:
        flash(f"Connection {name} not established: {e}")
        return web.redirect("conn_list")
    flash(f"Connection {name} established (IKE_SA #{reply.get('ike')}).")
    return web.redirect("sa_list")


# -- pool ---------------------------------------------------------------------------------------------


def pool_list() -> ResponseReturnValue:
    return pool_page({"name": "", "range": "", "end": "", "timeout": "0"}, {})


def pool_page(f: dict[str, str], ferr: dict[str, str]) -> ResponseReturnValue:
    """The pools and their leases, with the add form (``f`` its values, ``ferr`` its errors)."""
    errors: list[str] = list(ferr.values())
    pools: list[dict[str, Any]] = []
    leases: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    db = gateway().config_db
    if db is not None:
        try:
            pools, leases = sa_config.pool_rows(db)
        except SQLAlchemyError as e:
            errors.append(f"The configuration database cannot be read: {str(e).splitlines()[0]}")
    try:
        status = ask({"cmd": "ipsec-status"})
    except DaemonError:
        status = {}  # an iked without gateway sources: no in-memory pools to show
    named = {p["name"] for p in pools}
    for name, p in (status.get("pools") or {}).items():
        if name not in named:  # subnets (rightsourceip=10.3.0.0/16): in memory, not kept
            memory.append({"name": name, **p})
    for lease in leases:
        when = lease["acquired"] if lease["online"] else lease["released"]
        lease["since"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if when else "—"
    return web.render("pool/list.html", pools=pools, leases=leases, memory=memory, errors=errors, f=f, ferr=ferr,
                      status=400 if ferr else 503 if errors else 200)


_GET_POST = ["GET", "POST"]
ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/user/login", user_login, _GET_POST),
    ("/user/logout", user_logout, ["POST"]),
    ("/sa/list", sa_list, ["GET"]),
    ("/sa/terminate", sa_terminate, ["POST"]),
    ("/conn/list", conn_list, ["GET"]),
    ("/conn/initiate", conn_initiate, ["POST"]),
    ("/pool/list", pool_list, ["GET"]),
    *sa_config.ROUTES,
]
PUBLIC = frozenset({"user_login"})


def create_app(db: str | sessionmaker[Session] | None = None, config: SaManagerConfig | None = None, *,
               init_db: bool = True, clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep,
               ask_daemon: Callable[[dict[str, Any], float], dict[str, Any]] | None = None) -> web.Portal:
    """WSGI app factory.  ``db``: med_db (accounts, sessions) as a URL or a session factory;
    ``ask_daemon(request, timeout)``: iked's reply (default: over ``config.control``)."""
    cfg = config or SaManagerConfig()
    factory = web.session_factory(db, init_db=init_db)
    settings = web.PortalSettings(
        name="iksa", title="SA Manager", templates="sa/", login_endpoint="user_login", home_endpoint="sa_list",
        public=PUBLIC, session_timeout=cfg.session_timeout, max_sessions=cfg.max_sessions, throttle=cfg.throttle)
    app = web.make_portal(__name__, settings, factory, clock=clock, sleep=sleep, user_valid=_operator_valid,
                          context=_context)
    config_db = None
    if cfg.config_db:
        from gateway.sqlconf.models import Base
        from gateway.sqlconf.source import open_config_db

        config_db = open_config_db(cfg.config_db)
        Base.metadata.create_all(config_db)
    control = cfg.control
    app.extensions["iksa"] = Gateway(ask_daemon or (lambda req, timeout: ctl_call(control, req, timeout)), config_db)
    app.extensions["iksa_cfg"] = cfg
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view.__name__, view, methods=methods)
    return app


def add_operator_cmd(url: str | None, login: str, min_length: int) -> int:
    """``medmgr-sa --add-operator LOGIN``: a new account with the operator role (password on stdin,
    twice when a terminal), or the role for an existing account."""
    if (err := v.check_name(login, "Username")) is not None:
        print(err, file=sys.stderr)
        return 2
    engine = make_engine(url)
    create_all(engine)
    try:
        with make_session_factory(engine).begin() as s:
            if data.get_user_by_login(s, login) is not None:
                pr.make_admin(s, login)
                print(f"{login} is an operator now")
                return 0
            if sys.stdin.isatty():
                pw, confirm = getpass.getpass("Password: "), getpass.getpass("Again: ")
            else:
                pw = confirm = sys.stdin.readline().rstrip("\n")
            if (err := v.check_new_password(pw, confirm, min_length)) is not None:
                print(err, file=sys.stderr)
                return 2
            user = data.create_user(s, login, hash_password(pw))
            user.admin = True
            print(f"operator {login} added")
            return 0
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--add-operator")
    pre.add_argument("--db")
    pre.add_argument("--password-min-length", type=int, default=10)
    early, _ = pre.parse_known_args(argv)
    if early.add_operator:
        return add_operator_cmd(early.db, early.add_operator, early.password_min_length)
    p = portal_parser("medmgr-sa", __doc__)
    p.add_argument("--control", default=DEFAULT_CONTROL, metavar="SOCKET", help="iked's control socket")
    p.add_argument("--config-db", metavar="URL",
                   help="iked's [daemon] config_db: enables the pages that edit connections, identities, "
                        "secrets and pools")
    p.add_argument("--password-min-length", type=int, default=10)
    p.add_argument("--add-operator", metavar="LOGIN",
                   help="add an operator account (password on stdin) or give LOGIN the role, then exit")
    args = p.parse_args(argv)
    cfg = SaManagerConfig(control=args.control, config_db=args.config_db,
                          password_min_length=args.password_min_length, session_timeout=args.session_timeout,
                          max_sessions=args.max_sessions, throttle=throttle_config(args))
    serve(create_app(args.db, cfg), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
