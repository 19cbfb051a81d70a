"""The measured NAT behaviour in the client database (client_config.nat, what the client manager shows),
and a database made before the column existed gains it when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from med_db import data
from med_db.engine import make_session_factory, open_database
from mediation_client.status import DbStatus

TEXT = "mapping EIM, filtering APDF, port preserving, no hairpinning"


def test_set_nat_writes_client_config(tmp_path: Path) -> None:
    sessions = make_session_factory(open_database(f"sqlite:///{tmp_path / 'client.sqlite'}"))
    with sessions.begin() as s:
        data.generate_client_key(s, bits=2048)
    st = DbStatus(sessions, {})
    st.set_nat(TEXT)
    with sessions() as s:
        cfg = data.get_client_config(s)
        assert cfg is not None and cfg.nat == TEXT
    st.set_nat(None)
    with sessions() as s:
        cfg = data.get_client_config(s)
        assert cfg is not None and cfg.nat is None


def test_without_key_row_nothing_is_written_and_nothing_fails(tmp_path: Path) -> None:
    sessions = make_session_factory(open_database(f"sqlite:///{tmp_path / 'client.sqlite'}"))
    DbStatus(sessions, {}).set_nat(TEXT)
    with sessions() as s:
        assert data.get_client_config(s) is None


def test_older_database_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    open_database(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as db:  # the table as it was before the column
        db.execute('DROP TABLE "client_config"')
        db.execute('CREATE TABLE "client_config" ("id" INTEGER NOT NULL PRIMARY KEY, "keyid" BLOB NOT NULL, '
                   '"public_key" BLOB NOT NULL, "private_key" BLOB NOT NULL, "created" DATETIME NOT NULL)')
    sessions = make_session_factory(open_database(f"sqlite:///{path}"))
    with sessions.begin() as s:
        data.generate_client_key(s, bits=2048)
    DbStatus(sessions, {}).set_nat(TEXT)
    with sessions() as s:
        cfg = data.get_client_config(s)
        assert cfg is not None and cfg.nat == TEXT
