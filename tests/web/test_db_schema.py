"""schema.sql and the SQLAlchemy models: same tables, constraints enforced, data functions work.

Every test runs against SQLite, (marker ``pg``) a real PostgreSQL server and (marker ``mysql``) a real
MariaDB server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from med_db import STATUS_CONNECTING, STATUS_DOWN, STATUS_UP, Base, Peer, User
from med_db import data as d
from med_db.engine import make_engine, make_session_factory
from med_db.keyid import parse_peer_public_key
from med_db.models import utcnow
from med_db.schema import SCHEMA_PATH, load_schema, schema_sql, statements
from tests.web.webtools import new_database


def _describe(engine: Engine) -> dict[str, Any]:
    """A dialect-neutral description of every table: columns, keys, uniques, checks."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        cols = {
            c["name"]: (str(c["type"].compile(dialect=engine.dialect)).upper(), bool(c["nullable"]))
            for c in insp.get_columns(table)
        }
        pk = tuple(insp.get_pk_constraint(table)["constrained_columns"])
        fks = sorted(
            (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
             (f.get("options") or {}).get("ondelete", "").upper())
            for f in insp.get_foreign_keys(table)
        )
        uniques = sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table))
        checks = sorted(str(c["name"]) for c in insp.get_check_constraints(table))
        # the indexes schema.sql names (MySQL also lists those behind its keys)
        indexes = sorted((str(i["name"]), tuple(i["column_names"])) for i in insp.get_indexes(table)
                         if str(i["name"]).startswith("ix_"))
        options = {k: str(v).lower() for k, v in insp.get_table_options(table).items()}  # MySQL only
        out[table] = {"columns": cols, "pk": pk, "fks": fks, "uniques": uniques, "checks": checks,
                      "indexes": indexes, "options": options}
    return out


def _second_url(request: pytest.FixtureRequest, url: str, tmp_path: Path) -> str:
    return new_database(request, url, tmp_path, "models")


@pytest.fixture
def engine(db_url: str) -> Engine:
    e = make_engine(db_url)
    load_schema(e)
    return e


@pytest.fixture
def session(engine: Engine) -> Any:
    with make_session_factory(engine)() as s:
        yield s


def test_schema_sql_matches_models(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from_sql = make_engine(db_url)
    load_schema(from_sql)
    from_models = make_engine(_second_url(request, db_url, tmp_path))
    Base.metadata.create_all(from_models)
    a, b = _describe(from_sql), _describe(from_models)
    assert set(a) == set(Base.metadata.tables) == {
        "user", "peer", "me_callback", "mediation_grant", "client_config", "mediation_server_config",
        "connection", "web_session", "web_secret", "peer_presence", "server_state", "web_setting",
        "web_login_failure", "web_login_lock",
    }
    for table in a:
        assert a[table] == b[table], table
    assert a["peer"]["fks"] == [(("user",), "user", ("id",), "CASCADE")]
    assert ("user", "alias") in a["peer"]["uniques"] and ("keyid",) in a["peer"]["uniques"]
    assert a["peer"]["columns"]["public_key"][1] is False  # NOT NULL
    assert a["connection"]["columns"]["last_error"][1] is True
    assert a["web_session"]["indexes"] == [("ix_web_session_last_seen", ("portal", "last_seen"))]
    assert a["web_login_failure"]["indexes"] == [
        ("ix_web_login_failure_started", ("portal", "started")),
        ("ix_web_login_failure_subject", ("portal", "kind", "subject", "started"))]
    assert a["web_login_lock"]["indexes"] == [("ix_web_login_lock_used", ("portal", "used"))]
    if from_sql.dialect.name == "mysql":
        assert a["user"]["options"]["mysql_engine"] == "innodb"
        assert a["user"]["options"]["mysql_default charset"] == "utf8mb4"
        assert a["user"]["options"]["mysql_collate"] == "utf8mb4_bin"
        assert a["user"]["columns"]["created"] == ("DATETIME(6)", False)
    from_sql.dispose()
    from_models.dispose()


def test_schema_statement_split_and_dialects() -> None:
    stmts = statements(schema_sql("sqlite"))
    assert len(stmts) == 18 and sum(s.startswith("CREATE TABLE") for s in stmts) == 14
    assert [s.split("(")[0].strip() for s in stmts if not s.startswith("CREATE TABLE")] == [
        'CREATE INDEX "ix_web_session_last_seen" ON "web_session"',
        'CREATE INDEX "ix_web_login_failure_subject" ON "web_login_failure"',
        'CREATE INDEX "ix_web_login_failure_started" ON "web_login_failure"',
        'CREATE INDEX "ix_web_login_lock_used" ON "web_login_lock"']
    pg = schema_sql("postgresql")
    code = "\n".join(line.split("--")[0] for line in pg.splitlines())
    assert "BLOB" not in code and "VARBINARY" not in code and "DATETIME" not in code
    assert "GENERATED BY DEFAULT AS IDENTITY" in pg and "/*!" not in code
    lite = "\n".join(statements(schema_sql("sqlite")))
    assert "/*!" not in lite and "AUTO_INCREMENT" not in lite and "utf8mb4" not in lite
    my = schema_sql("mysql")
    assert "/*! AUTO_INCREMENT */" in my and "ANSI_QUOTES" in my
    assert my.count("COLLATE=utf8mb4_bin */;") == 14 and "DATETIME /*! (6) */" in my


def test_mysql_urls_use_pymysql() -> None:
    pytest.importorskip("pymysql")
    for url in ("mysql://u:pw@localhost/med", "mariadb://u@localhost/med?unix_socket=/run/mysqld/mysqld.sock",
                "mysql+pymysql://u@127.0.0.1:3306/med"):
        e = make_engine(url)  # no connection is made here
        assert e.dialect.name == "mysql" and e.dialect.driver == "pymysql", url
        assert e.url.query["charset"] == "utf8mb4"
        e.dispose()


def test_text_and_time_semantics_are_portable(session: Session) -> None:
    """Same answers on every backend: case-sensitive unique text, any Unicode, microseconds."""
    s = session
    alice, cap = _user(s, "alice"), _user(s, "Alice")  # MySQL's default *_ci collations: one user
    assert alice.id != cap.id
    assert d.get_user_by_login(s, "ALICE") is None
    snow = "Zuhause \u2603 \U0001f600"  # 4-byte UTF-8: needs utf8mb4 on MySQL
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    p = d.add_peer(s, alice.id, snow, b"spki", b"\x05" * 20)
    p.created = stamp
    d.add_peer(s, alice.id, snow.upper(), b"spki", b"\x06" * 20)
    s.commit()
    s.expire_all()
    got = d.get_peer(s, alice.id, p.id)
    assert got is not None and got.alias == snow and got.created == stamp
    assert [x.alias for x in d.list_peers(s, alice.id)] == sorted([snow, snow.upper()])


def _user(s: Session, login: str = "alice") -> User:
    u = d.create_user(s, login, "scrypt$x")
    s.commit()
    return u


def test_users_and_peers_crud(session: Session, reference_pem: str) -> None:
    s = session
    alice, bob = _user(s, "alice"), _user(s, "bob")
    with pytest.raises(d.DataError, match=r"Username already exists\."):
        d.create_user(s, "alice", "x")
    spki, keyid = parse_peer_public_key(reference_pem)
    p = d.add_peer(s, alice.id, "home", spki, keyid)
    s.commit()
    assert [x.alias for x in d.list_peers(s, alice.id)] == ["home"]
    assert d.list_peers(s, bob.id) == []
    assert d.get_peer(s, bob.id, p.id) is None  # ownership
    assert d.delete_peer(s, bob.id, p.id) is False
    assert d.find_peer_by_keyid(s, keyid) is not None
    with pytest.raises(d.DataError, match="Peer already exists"):
        d.add_peer(s, bob.id, "other", spki, keyid)  # one key, once, across users
    with pytest.raises(d.DataError, match="already have a peer named"):
        d.add_peer(s, alice.id, "home", spki, b"\x01" * 20)
    d.update_user(s, alice, "alice2", None)
    s.commit()
    assert d.get_user_by_login(s, "alice2") is not None
    assert d.delete_user(s, alice.id)
    s.commit()
    s.expire_all()
    assert s.scalar(text('SELECT COUNT(*) FROM "peer"')) == 0  # database cascade


def _raw(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as c:
        c.execute(text(sql), params)


def test_constraints_enforced_by_database(engine: Engine) -> None:
    now = dt.datetime(2024, 1, 1)
    _raw(engine, 'INSERT INTO "user" ("login", "password", "created") VALUES (:l, :p, :c)', l="a", p="h", c=now)
    with pytest.raises(IntegrityError):
        _raw(engine, 'INSERT INTO "user" ("login", "password", "created") VALUES (:l, :p, :c)', l="a", p="h",
             c=now)
    with pytest.raises(IntegrityError):  # NOT NULL password
        _raw(engine, 'INSERT INTO "user" ("login", "created") VALUES (:l, :c)', l="b", c=now)
    ins_peer = ('INSERT INTO "peer" ("user", "alias", "keyid", "public_key", "created", "updated") '
                "VALUES (:u, :a, :k, :pk, :c, :c)")
    with pytest.raises(IntegrityError):  # FK: no such user
        _raw(engine, ins_peer, u=999, a="x", k=b"\x00" * 20, pk=b"k", c=now)
    _raw(engine, ins_peer, u=1, a="x", k=b"\x00" * 20, pk=b"k", c=now)
    with pytest.raises(IntegrityError):  # UNIQUE(user, alias)
        _raw(engine, ins_peer, u=1, a="x", k=b"\x01" * 20, pk=b"k", c=now)
    with pytest.raises(IntegrityError):  # UNIQUE(keyid)
        _raw(engine, ins_peer, u=1, a="y", k=b"\x00" * 20, pk=b"k", c=now)
    with pytest.raises(IntegrityError):  # NOT NULL public_key
        _raw(engine, ins_peer, u=1, a="z", k=b"\x02" * 20, pk=None, c=now)
    ins_conn = ('INSERT INTO "connection" ("alias", "active", "keyid", "public_key", "status", "created") '
                "VALUES (:a, :act, :k, :pk, :st, :c)")
    with pytest.raises(IntegrityError):  # CHECK status IN (1, 2, 3)
        _raw(engine, ins_conn, a="c", act=True, k=b"\x03" * 20, pk=b"k", st=7, c=now)
    with pytest.raises(IntegrityError):  # single-row client config
        _raw(engine, 'INSERT INTO "client_config" ("id", "keyid", "public_key", "private_key", "created") '
             'VALUES (2, :k, :p, :q, :c)', k=b"k", p=b"p", q=b"q", c=now)
    _raw(engine, 'DELETE FROM "user" WHERE "id" = 1')
    with engine.connect() as c:
        assert c.execute(text('SELECT COUNT(*) FROM "peer"')).scalar() == 0


def test_grants_and_callbacks(session: Session) -> None:
    s = session
    u = _user(s)
    peers: list[Peer] = [
        d.add_peer(s, u.id, f"p{i}", b"spki", bytes([i]) * 20) for i in range(3)
    ]
    s.commit()
    assert d.peer_may_mediate(s, peers[0].id, peers[1].id)  # no rows: everyone
    d.grant_mediation(s, peers[0].id, peers[1].id)
    s.commit()
    assert d.peer_may_mediate(s, peers[0].id, peers[1].id)
    assert not d.peer_may_mediate(s, peers[0].id, peers[2].id)
    now = utcnow()
    d.add_callback(s, (11, b"a" * 20), (11, b"b" * 20), now + dt.timedelta(minutes=5))
    d.add_callback(s, (11, b"a" * 20), (11, b"b" * 20), now + dt.timedelta(minutes=10))  # refresh
    d.add_callback(s, (11, b"c" * 20), (11, b"b" * 20), now - dt.timedelta(minutes=1))  # expired
    s.commit()
    live = d.callbacks_for_target(s, (11, b"b" * 20), now)
    assert [c.requester_id for c in live] == [b"a" * 20]
    assert d.prune_callbacks(s, now) == 1
    s.commit()


def test_client_side(session: Session, reference_pem: str) -> None:
    s = session
    assert d.get_client_config(s) is None
    cfg = d.generate_client_key(s)
    s.commit()
    assert len(cfg.keyid) == 20 and cfg.private_key.startswith(b"\x30")
    spki, keyid = parse_peer_public_key(reference_pem)
    d.set_server_config(s, "ms.example.net", 500, spki, keyid)
    c = d.save_connection(s, None, alias="bob", spki=spki, keyid=keyid, local_subnet="10.1.0.0/24",
                          remote_subnet=None, active=True)
    s.commit()
    assert c.status == STATUS_DOWN
    with pytest.raises(d.DataError, match="already exists"):
        d.save_connection(s, None, alias="bob", spki=spki, keyid=b"\x09" * 20, local_subnet=None,
                          remote_subnet=None, active=False)
    d.set_connection_status(s, c.id, STATUS_CONNECTING)
    d.set_connection_status(s, c.id, STATUS_UP, error=None)
    s.commit()
    s.expire_all()
    got = d.get_connection(s, c.id)
    assert got is not None and got.status_name == "UP" and got.status_changed is not None
    d.set_connection_status(s, c.id, STATUS_DOWN, error="peer unreachable" * 40)
    s.commit()
    s.expire_all()
    got = d.get_connection(s, c.id)
    assert got is not None and got.last_error is not None and len(got.last_error) == 255
    with pytest.raises(ValueError):
        d.set_connection_status(s, c.id, 9)


def test_sqlite_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "client.sqlite"
    e = make_engine(f"sqlite:///{path}")
    load_schema(e)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    e.dispose()


@pytest.mark.mysql
def test_mysql_client_loads_schema_verbatim(request: pytest.FixtureRequest) -> None:
    """`mariadb DB < schema.sql` (the native client, the file as shipped), then the models work on it."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb/mysql command-line client")
    server = request.getfixturevalue("my_server")
    url = server.new_database()
    dbname = url.split("/")[3].split("?")[0]
    with open(SCHEMA_PATH, "rb") as f:
        subprocess.run([client, "--no-defaults", f"--socket={server.sock}", "-uroot", dbname], stdin=f,
                       check=True, capture_output=True, timeout=60)
    e = make_engine(url)
    assert set(inspect(e).get_table_names()) == set(Base.metadata.tables)
    with make_session_factory(e)() as s:
        u = _user(s, "carol")
        d.add_peer(s, u.id, "\u00e9t\u00e9", b"spki", b"\x07" * 20)
        s.commit()
    with pytest.raises(IntegrityError):  # CHECK enforced
        _raw(e, 'INSERT INTO "mediation_server_config" VALUES (2, :a, 500, :k, :p, :c)', a="x", k=b"k",
             p=b"p", c=dt.datetime(2024, 1, 1))
    e.dispose()
