"""Command-line plumbing shared by the two portal launchers (flup FastCGI server)."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def add_common_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="FastCGI unix socket to listen on")
    where.add_argument("--bind", metavar="HOST:PORT", help="FastCGI TCP address to listen on")
    p.add_argument("--db", metavar="URL", default=None,
                   help="database URL (sqlite:///path, postgresql://..., mysql://...; default $MED_DB_URL "
                        "or sqlite:///var/lib/ikeme/med_db.sqlite)")
    p.add_argument("--session-timeout", type=float, default=900.0, help="login idle timeout, seconds")
    p.add_argument("--throttle-account", type=int, default=5,
                   help="failed logins per account allowed within --throttle-window")
    p.add_argument("--throttle-address", type=int, default=20,
                   help="failed logins per client address allowed within --throttle-window")
    p.add_argument("--throttle-window", type=float, default=900.0, help="seconds")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o660,
                   help="permissions of the unix socket (octal, default 660)")
    p.add_argument("-v", "--verbose", action="store_true")


def serve(app: Any, args: argparse.Namespace) -> None:
    """Run the WSGI app under flup's threaded FastCGI server until terminated."""
    from flup.server.fcgi import WSGIServer  # type: ignore[import-untyped]

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
