"""Engine and session factory from a database URL.

- default: SQLite at ``$MED_DB_URL`` or :data:`DEFAULT_SQLITE_PATH`;
- ``postgresql://...`` (or ``postgresql+psycopg://``) uses psycopg 3;
- ``mysql://...`` / ``mariadb://...`` use PyMySQL (``pip install pymysql``, not a default dependency).
SQLite files are created with mode 0600 (they hold client private keys) and foreign keys are enforced
on every connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
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


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """Engine for ``url`` (default: :func:`default_url`)."""
    u = make_url(normalize_url(url or default_url()))
    if u.get_backend_name() == "sqlite":
        _prepare_sqlite_file(u.database or "")
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
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
