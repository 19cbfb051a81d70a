"""Command-line plumbing shared by the two portal launchers (flup FastCGI server)."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from core_ike.version import add_version_argument
from medmgr_web.throttle import ThrottleConfig

log = logging.getLogger("medmgr_web")


def add_common_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="FastCGI unix socket to listen on")
    where.add_argument("--bind", metavar="HOST:PORT", help="FastCGI TCP address to listen on")
    p.add_argument("--db", metavar="URL", default=None,
                   help="database URL (sqlite:///path, postgresql://..., mysql://...; default $MED_DB_URL "
                        "or sqlite:///var/lib/ikeme/med_db.sqlite)")
    d = ThrottleConfig()
    p.add_argument("--session-timeout", type=float, default=900.0, help="login idle timeout, seconds")
    p.add_argument("--max-sessions", type=int, default=10_000,
                   help="logged-in sessions kept; beyond, the one idle the longest is dropped")
    p.add_argument("--throttle-address", type=int, default=d.address_limit,
                   help="failed logins from one client address (IPv6: its /64) within --throttle-window, "
                        "after which that address is refused until the oldest of them is older than the window")
    p.add_argument("--throttle-account", type=int, default=d.account_free,
                   help="failed logins per account within --throttle-window answered at once; each further "
                        "one doubles a delay before the answer (never a refusal)")
    p.add_argument("--throttle-delay-max", type=float, default=d.delay_max,
                   help="seconds, the longest delay before answering a login on an account under attack")
    p.add_argument("--throttle-window", type=float, default=d.window, help="seconds")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o660,
                   help="permissions of the unix socket (octal, default 660)")
    p.add_argument("-v", "--verbose", action="store_true")


def portal_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A portal's command line: its module's ``doc`` as the help text, the options every portal takes
    (:func:`add_common_args`) and --version."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_version_argument(p)
    return p


def throttle_config(args: argparse.Namespace) -> ThrottleConfig:
    return ThrottleConfig(address_limit=args.throttle_address, account_free=args.throttle_account,
                          delay_max=args.throttle_delay_max, window=args.throttle_window)


def serve(app: Any, args: argparse.Namespace) -> None:
    """Run the WSGI app under flup's threaded FastCGI server until terminated.  SIGUSR1 logs the
    app's counters (sessions, throttled addresses and accounts)."""
    from flup.server.fcgi import WSGIServer  # type: ignore[import-untyped]

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGUSR1, lambda signum, frame: log.info("%s", app.stats()))
    if args.socket:
        bind: Any = args.socket
        umask = 0o777 & ~args.socket_mode
    else:
        host, _, port = args.bind.rpartition(":")
        bind, umask = (host or "127.0.0.1", int(port)), None
    kwargs: dict[str, Any] = {"bindAddress": bind}
    if umask is not None:
        kwargs["umask"] = umask
    WSGIServer(app, **kwargs).run()
