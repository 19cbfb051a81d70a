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

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_PATH = "/var/lib/ikeme/med_db.sqlite"
URL_ENV = "MED_DB_URL"

log = logging.getLogger("med_db")


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
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
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
    """Create missing tables from schema.sql (no-op for tables that exist).  Several processes may
    start at once on a new database (portal processes, a daemon): when another one created the tables
    first, the error of the one that lost is no error."""
    import time

    from sqlalchemy import inspect

    from med_db.models import Base
    from med_db.schema import load_schema

    for attempt in range(5):
        try:
            if not set(inspect(engine).get_table_names()) & set(Base.metadata.tables):
                load_schema(engine)
            else:
                Base.metadata.create_all(engine)
                _add_missing_columns(engine)
            return
        except DBAPIError:
            if set(Base.metadata.tables) <= set(inspect(engine).get_table_names()):
                return
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))  # MySQL: another process is still creating the rest


# Columns added to existing tables since their first release, with the DDL that adds them to a database
# made before (schema.sql gives them defaults for this).
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("user", "admin", 'ALTER TABLE "user" ADD COLUMN "admin" BOOLEAN NOT NULL DEFAULT FALSE'),
    ("user", "disabled", 'ALTER TABLE "user" ADD COLUMN "disabled" BOOLEAN NOT NULL DEFAULT FALSE'),
    ("client_config", "nat", 'ALTER TABLE "client_config" ADD COLUMN "nat" VARCHAR(255)'),
)


def _add_missing_columns(engine: Engine) -> None:
    from sqlalchemy import text

    insp = inspect(engine)
    tables = set(insp.get_table_names())
    columns = {t: {c["name"] for c in insp.get_columns(t)} for t in {t for t, _, _ in ADDED_COLUMNS} & tables}
    todo = [ddl for table, column, ddl in ADDED_COLUMNS if table in columns and column not in columns[table]]
    if not todo:
        return
    with engine.begin() as conn:
        for ddl in todo:
            conn.execute(text(ddl))
    log.info("added %d column(s) to the med_db tables", len(todo))


class DatabaseError(Exception):
    """The database cannot be used; the message is one line for the admin (no password in it)."""


_DRIVERS = {"psycopg": "psycopg[binary]", "pymysql": "PyMySQL", "MySQLdb": "PyMySQL"}


def safe_url(url: str) -> str:
    """``url`` for messages: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _oneline(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e  # the driver's own words, not SQLAlchemy's wrapper text
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    text = args[1] if len(args) == 2 and isinstance(args[0], int) else orig  # PyMySQL: (code, message)
    return " ".join(str(text).split()) or type(orig).__name__


def open_database(url: str, *, create_tables: bool = True) -> Engine:
    """An engine the daemons can rely on: the database is reachable and has the med_db tables.

    Missing tables are created as the portal creates them (:func:`create_all`, idempotent) unless
    ``create_tables`` is false.  Anything in the way is a :class:`DatabaseError` with one line: an
    invalid URL, a missing driver, an SQLite directory that does not exist (a new SQLite file is
    created, and removed again when the database then cannot be set up), a server that cannot be
    reached, tables that cannot be created.
    """
    try:
        u = make_url(normalize_url(url))
    except ArgumentError:
        raise DatabaseError(f"invalid database URL {safe_url(url)!r} (sqlite:///PATH, postgresql://..., "
                            "mysql://...)") from None
    shown = safe_url(url)
    created: Path | None = None
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        created = _new_sqlite_file(u, shown)
    elif u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        kwargs["connect_args"] = {"connect_timeout": 10}  # a server that does not answer: fail, do not hang
    try:
        engine = make_engine(u.render_as_string(hide_password=False), **kwargs)
        try:
            _check_tables(engine, shown, create_tables)
        except BaseException:
            engine.dispose()
            raise
    except ModuleNotFoundError as e:
        _remove(created)
        pkg = _DRIVERS.get(e.name or "", e.name)
        raise DatabaseError(f"cannot open {shown}: the database driver is not installed (pip install {pkg})") from None
    except OSError as e:
        _remove(created)
        raise DatabaseError(f"cannot open {shown}: {e.strerror or e}") from None
    except BaseException:
        _remove(created)
        raise
    return engine


def _new_sqlite_file(u: URL, shown: str) -> Path | None:
    """The SQLite file open_database is about to create (None: it exists or is not a file)."""
    db = u.database or ""
    if db in ("", ":memory:") or db.startswith("file:"):
        return None
    p = Path(db)
    if not p.parent.is_dir():
        raise DatabaseError(f"cannot open {shown}: directory {p.parent} does not exist")
    if p.is_dir():
        raise DatabaseError(f"cannot open {shown}: {p} is a directory")
    return None if p.exists() else p


def _remove(p: Path | None) -> None:
    """Undo the creation of a new SQLite file (and its journal) that could not be set up."""
    if p is None:
        return
    for f in (p, p.with_name(p.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def _check_tables(engine: Engine, shown: str, create_tables: bool) -> None:
    from med_db.models import Base

    try:
        present = set(inspect(engine).get_table_names())
    except SQLAlchemyError as e:
        raise DatabaseError(f"cannot open {shown}: {_oneline(e)}") from None
    missing = sorted(set(Base.metadata.tables) - present)
    if not missing:
        if create_tables:
            _add_missing_columns(engine)
        return
    if not create_tables:
        raise DatabaseError(f"{shown} lacks the med_db tables {', '.join(missing)}: start the portal once, "
                            f"or load schema.sql (python -m med_db.schema {engine.dialect.name})")
    try:
        create_all(engine)
    except SQLAlchemyError as e:
        raise DatabaseError(f"cannot create the med_db tables in {shown}: {_oneline(e)}; create them with the "
                            f"portal or load schema.sql (python -m med_db.schema {engine.dialect.name})") from None
    if present & set(Base.metadata.tables):
        log.info("created the missing med_db table(s) %s in %s", ", ".join(missing), shown)
    else:
        log.info("created the med_db tables in %s (schema.sql)", shown)
