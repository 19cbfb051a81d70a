"""med_db grant functions (set_grants, list_grants, grant_counts) on SQLite, PostgreSQL (marker ``pg``)
and MariaDB (marker ``mysql``), read back as the mediation server reads them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from med_db import Peer
from med_db import data as d
from med_db.engine import make_engine, make_session_factory
from med_db.models import MediationGrant
from med_db.schema import load_schema


@pytest.fixture
def engine(db_url: str) -> Engine:
    e = make_engine(db_url)
    load_schema(e)
    return e


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as s:
        yield s


def _peers(s: Session) -> tuple[list[Peer], list[Peer]]:
    a = d.create_user(s, "ann", "x")
    b = d.create_user(s, "ben", "x")
    mine = [d.add_peer(s, a.id, f"a{i}", b"spki", bytes([i]) * 20) for i in range(3)]
    theirs = [d.add_peer(s, b.id, f"b{i}", b"spki", bytes([0x10 + i]) * 20) for i in range(2)]
    s.commit()
    return mine, theirs


def test_set_list_clear_grants(session: Session) -> None:
    s = session
    (a0, a1, a2), (b0, _b1) = _peers(s)
    assert d.list_grants(s, a0.id) == [] and d.grant_counts(s, a0.user_id) == {}
    d.set_grants(s, a0.id, [a2.id, b0.id, a2.id])  # duplicates collapse
    s.commit()
    assert [p.alias for p in d.list_grants(s, a0.id)] == ["a2", "b0"]
    assert d.grant_counts(s, a0.user_id) == {a0.id: 2}
    assert d.grant_counts(s, b0.user_id) == {}  # counts are per owner of the restricted peer
    assert d.peer_may_mediate(s, a0.id, a2.id) and d.peer_may_mediate(s, a0.id, b0.id)
    assert not d.peer_may_mediate(s, a0.id, a1.id)
    assert d.peer_may_mediate(s, a1.id, a0.id)  # a1 has no rows: everyone
    # replace: kept rows keep their creation time, dropped rows go, new rows come
    (kept_created,) = s.scalars(select(MediationGrant.created).where(
        MediationGrant.peer_id == a0.id, MediationGrant.target_id == b0.id)).all()
    d.set_grants(s, a0.id, [b0.id, a1.id])
    s.commit()
    assert [p.alias for p in d.list_grants(s, a0.id)] == ["a1", "b0"]
    assert s.scalars(select(MediationGrant.created).where(
        MediationGrant.peer_id == a0.id, MediationGrant.target_id == b0.id)).one() == kept_created
    # the same set again in the same session (identity map holds the rows) is a no-op
    d.set_grants(s, a0.id, [b0.id, a1.id])
    d.set_grants(s, a0.id, [a1.id])
    d.set_grants(s, a0.id, [a1.id, b0.id])
    s.commit()
    assert [p.alias for p in d.list_grants(s, a0.id)] == ["a1", "b0"]
    # clear: no rows, every peer reachable again
    d.set_grants(s, a0.id, [])
    s.commit()
    assert d.list_grants(s, a0.id) == [] and d.peer_may_mediate(s, a0.id, a2.id)
    assert s.scalar(select(func.count()).select_from(MediationGrant)) == 0


def test_set_grants_rejects_self_and_missing(session: Session) -> None:
    s = session
    (a0, a1, _), _ = _peers(s)
    d.set_grants(s, a0.id, [a1.id])
    s.commit()
    with pytest.raises(d.DataError, match="itself"):
        d.set_grants(s, a0.id, [a0.id])
    with pytest.raises(d.DataError, match="No such peer"):
        d.set_grants(s, a0.id, [a1.id, 999999])
    s.rollback()
    assert [p.alias for p in d.list_grants(s, a0.id)] == ["a1"]  # unchanged


def test_grants_vanish_with_either_peer(session: Session) -> None:
    s = session
    (a0, a1, a2), (b0, _) = _peers(s)
    d.set_grants(s, a0.id, [a1.id, b0.id])
    d.set_grants(s, a2.id, [a0.id])
    s.commit()
    assert d.delete_peer(s, b0.user_id, b0.id)
    s.commit()
    s.expire_all()
    assert [p.alias for p in d.list_grants(s, a0.id)] == ["a1"]
    assert d.delete_peer(s, a0.user_id, a0.id)
    s.commit()
    s.expire_all()
    # its only target is gone, but it stays restricted (schema.sql: the self row), never open to everyone
    assert d.list_grants(s, a2.id) == []
    assert not d.peer_may_mediate(s, a2.id, a1.id)
    assert s.scalar(select(func.count()).select_from(MediationGrant)) == 1
    d.set_grants(s, a2.id, [])  # explicitly opened again by its owner
    s.commit()
    assert d.peer_may_mediate(s, a2.id, a1.id)
    assert s.scalar(select(func.count()).select_from(MediationGrant)) == 0
