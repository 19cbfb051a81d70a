"""The SQL configuration backend on a real PostgreSQL and a real MariaDB: strongSwan-shaped rows
(tests/unit/gateway/data) load into the same connections and credentials as on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core_ike.ike.identity import Identity
from gateway.sqlconf.loader import load
from gateway.sqlconf.pools import DbVipPool, PoolAdmin, parse_range
from gateway.sqlconf.source import open_config_db
from scenarios.lab.creds import ca_and_host
from tests.unit.gateway.sqldata import cert_subst, load_sql
from tests.unit.gateway.test_sqlconf import IPS, check_net2net_psk


@pytest.fixture(params=[pytest.param("pg_server", marks=pytest.mark.pg),
                        pytest.param("my_server", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param).new_database())


def test_net2net_psk(url: str) -> None:
    check_net2net_psk(open_config_db(url))


def test_rw_psk(url: str) -> None:
    db = open_config_db(url)
    load_sql(db, "rw-psk-ipv4.sql", IPS)
    with Session(db) as s:
        snap = load(s)
    moon = Identity.parse("192.168.0.1")
    assert snap.creds.psk(moon, Identity.parse("192.168.0.200")) == b"dave-secret-33e0a"
    assert snap.connections[0].remote.id.is_any  # identity type 0, data '%any'


def test_certificates_and_keys(url: str) -> None:
    db = open_config_db(url)
    pki = ca_and_host()
    load_sql(db, "net2net-cert.sql", {**IPS, **cert_subst(pki)})
    with Session(db) as s:
        snap = load(s)
    assert snap.problems == []
    [c] = snap.connections
    assert c.local.certs == [pki["cert"]] and snap.creds.cas == [pki["ca"]]
    assert c.proposals == "aes128-sha256-modp3072,aes256gcm16-prfsha256-x25519"


def test_pools(url: str) -> None:
    """`ikeme-ipsec pool` and iked's leases on the server: an identity's address survives a restart."""
    db = open_config_db(url)
    admin = PoolAdmin(db)
    assert admin.add("rw", *parse_range("10.3.0.0/24"), timeout=3600) == 254
    now = [1_700_000_000.0]
    pool = DbVipPool(db, lambda: now[0])
    pool.read()
    carol, dave = Identity.parse("carol@example.org"), Identity.parse("dave@example.org")
    a, b = pool.lease(["%rw"], carol), pool.lease(["rw"], dave)
    assert (str(a), str(b)) == ("10.3.0.1", "10.3.0.2")
    assert a is not None
    pool.release(a, "carol")
    assert pool.flush() == 3
    again = DbVipPool(db, lambda: now[0] + 10)
    again.read()
    assert again.lease(["rw"], dave) == b and again.lease(["rw"], carol) == a
    again.flush()
    [st] = admin.status()
    assert (st["size"], st["online"], st["offline"]) == (254, 2, 0)
    assert {r["identity"] for r in admin.leases("rw")} == {"carol@example.org", "dave@example.org"}
    admin.delete("rw")
    assert admin.status() == []
