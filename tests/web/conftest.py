"""Fixtures for the web/DB tests: a real PostgreSQL and MariaDB, a real lighttpd with the portals behind it
(their classes and helpers in webtools.py)."""

from __future__ import annotations

import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guards import require
from tests.web.webtools import REFERENCE_PEM, MyServer, PgServer, Portal, chromium


@pytest.fixture
def reference_pem() -> str:
    return REFERENCE_PEM


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    require("root", "postgresql", why="a PostgreSQL server of the tests' own")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user")
    base = Path(tempfile.mkdtemp(prefix="medpg-"))
    server = PgServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def my_server() -> Iterator[MyServer]:
    require("root", "mariadb", why="a MariaDB server of the tests' own")
    try:
        pwd.getpwnam("mysql")
        import pymysql  # noqa: F401
    except (KeyError, ImportError):
        pytest.skip("no mysql system user or PyMySQL not installed")
    base = Path(tempfile.mkdtemp(prefix="medmy-"))
    server = MyServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=[
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.pg),
    pytest.param("mysql", marks=pytest.mark.mysql),
])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite in a temp dir, or a fresh database on the session's PostgreSQL or
    MariaDB server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'med.sqlite'}"
    server = request.getfixturevalue("my_server" if request.param == "mysql" else "pg_server")
    return server.new_database()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a module's browser tests."""
    require("chromium", why="the browser tests")
    with chromium() as b:
        yield b


@pytest.fixture(scope="session")
def portal() -> Iterator[Portal]:
    require("lighttpd", why="the portals behind lighttpd")
    base = Path(tempfile.mkdtemp(prefix="medweb-"))
    p = Portal(base)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        shutil.rmtree(base, ignore_errors=True)
