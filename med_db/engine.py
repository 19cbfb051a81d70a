"""Engine and session factory from a database URL.

- default: SQLite at ``$MED_DB_URL`` or :data:`DEFAULT_SQLITE_PATH`;
- ``postgresql://...`` (or ``postgresql+psycopg://``) uses psycopg 3;
- ``mysql://...`` / ``mariadb://...`` use PyMySQL (``mysql+pymysql://``; ``pip install pymysql``, not a
  default dependency); a unix socket is given as ``?unix_socket=/path``.
SQLite files are created with mode 0600 (they hold client private keys) and foreign keys are enforced
on every connection.  MySQL/MariaDB connections talk utf8mb4 and run with ``ANSI_QUOTES`` (double-quoted
identifiers, as in schema.sql and the models' CHECK constraints) and ``STRICT_ALL_TABLES``; their
NOT NULL and CHECK violations are raised as :class:`sqlalchemy.exc.IntegrityError`, as on the other
backends (see the dialect notes in schema.sql).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_PATH = "/var/lib/ikeme/med_db.sqlite"
URL_ENV = "MED_DB_URL"


def default_url() -> str:
    return os.environ.get(URL_ENV) or f"sqlite:///{DEFAULT_SQLITE_PATH}"


def normalize_url(url: str) -> str:
    """Pick the driver this project ships for each backend."""
    if "://" not in url:  # a bare path means SQLite
        return f"sqlite:///{os.path.abspath(url)}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("mysql", "mariadb"):
        return f"mysql+pymysql://{rest}"
    return url


def _prepare_sqlite_file(path: str) -> None:
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(p, 0o600)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA busy_timeout = 5000")
    cur.close()


# Every MySQL/MariaDB session: double-quoted identifiers (schema.sql, CHECK constraints, portable raw SQL)
# and errors instead of silently adjusted values, whatever the server's configured sql_mode.
MYSQL_INIT_COMMAND = (
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'ANSI_QUOTES', 'STRICT_ALL_TABLES')"
)
# Constraint violations that MySQL/MariaDB (PyMySQL) do not report as IntegrityError:
# 1364 NOT NULL column omitted (no default), 3819 MySQL CHECK violated, 4025 MariaDB CHECK failed.
_MYSQL_CONSTRAINT_ERRORS = frozenset({1364, 3819, 4025})


def _mysql_handle_error(ctx: ExceptionContext) -> BaseException | None:
    exc, orig = ctx.sqlalchemy_exception, ctx.original_exception
    if not isinstance(exc, DBAPIError) or isinstance(exc, IntegrityError):
        return None
    args = getattr(orig, "args", ())
    if args and args[0] in _MYSQL_CONSTRAINT_ERRORS:
        return IntegrityError(ctx.statement, ctx.parameters, orig, connection_invalidated=exc.connection_invalidated)
    return None


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """Engine for ``url`` (default: :func:`default_url`)."""
    u = make_url(normalize_url(url or default_url()))
    if u.get_backend_name() == "sqlite":
        _prepare_sqlite_file(u.database or "")
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if u.get_backend_name() in ("mysql", "mariadb"):
        if "charset" not in u.query:
            u = u.update_query_dict({"charset": "utf8mb4"})
        connect_args = dict(kwargs.pop("connect_args", None) or {})
        connect_args.setdefault("init_command", MYSQL_INIT_COMMAND)
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        event.listen(engine, "handle_error", _mysql_handle_error)
        return engine
    return create_engine(u, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def create_all(engine: Engine) -> None:
    """Create missing tables from schema.sql (no-op for tables that exist)."""
    from sqlalchemy import inspect

    from med_db.models import Base
    from med_db.schema import load_schema

    if not set(inspect(engine).get_table_names()) & set(Base.metadata.tables):
        load_schema(engine)
    else:
        Base.metadata.create_all(engine)
