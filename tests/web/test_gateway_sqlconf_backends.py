"""The SQL configuration backend on a real PostgreSQL and a real MariaDB: strongSwan-shaped rows
(tests/unit/gateway/data) load into the same connections and credentials as on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core_ike.ike.identity import Identity
from gateway.sqlconf.loader import load
from gateway.sqlconf.source import open_config_db
from tests.unit.gateway.sqldata import ca_and_host, cert_subst, load_sql
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
