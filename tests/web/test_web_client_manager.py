"""Client manager over HTTP through lighttpd: admin login, key pair, mediation server, connections
with the status the client daemon writes."""

from __future__ import annotations

import os
import re
import sqlite3
import stat

import pytest
from conftest import ADMIN_PASSWORD, Portal
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from medweb_client import WebClient

from med_db import data
from med_db.engine import make_engine, make_session_factory

pytestmark = pytest.mark.web


def admin(portal: Portal) -> WebClient:
    c = WebClient(portal.url + "/cli")
    r = c.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    assert r.status == 200 and "Connections" in r.text()
    return c


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_login_required_and_wrong_password(portal: Portal) -> None:
    c = WebClient(portal.url + "/cli")
    assert c.get("connection/list", follow=False).location.endswith("/cli/user/login")
    r = c.submit("user/login", "user/login", {"password": "not it"})
    assert r.status == 401 and "Invalid password." in r.text()


def test_generate_key_shows_public_never_private(portal: Portal) -> None:
    c = admin(portal)
    r = c.submit("key/show", "key/generate", {})
    assert r.status == 200
    m = re.search(r'id="keyid">keyid:#([0-9a-f]{40})<', r.body)
    assert m, r.text()
    assert f"identity keyid:#{m.group(1)}." in r.text()  # the notice names it the same way
    assert "BEGIN PUBLIC KEY" in r.text() and "PRIVATE" not in r.body.replace("private key stays", "")
    db_path = portal.base / "cli.sqlite"
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        keyid, priv = db.execute('SELECT keyid, private_key FROM "client_config"').fetchone()
    assert keyid.hex() == m.group(1)
    assert ":".join(f"{b:02x}" for b in keyid) in r.text()  # and the colon form next to it
    key = serialization.load_der_private_key(priv, None)
    assert key.key_size == 2048  # type: ignore[union-attr]
    # a second generate needs the explicit "replace" box
    r = c.submit("key/show", "key/generate", {})
    assert r.status == 400 and "exists already" in r.text()
    r = c.submit("key/show", "key/generate", {"replace": "yes"})
    assert r.status == 200 and m.group(1) not in r.text()


def test_server_config(portal: Portal, reference_pem: str) -> None:
    c = admin(portal)
    r = c.submit("server/edit", "server/edit", {"address": "", "port": "99999", "public_key": "x"})
    assert r.status == 400
    for msg in ("Server address is missing.", "Port must be a number", "Parsing public key failed."):
        assert msg in r.text()
    r = c.submit("server/edit", "server/edit", {"address": "ms.example.net", "port": "4500",
                                                "public_key": reference_pem})
    assert r.status == 200 and "Mediation server saved." in r.text()
    r = c.get("server/edit")
    assert "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29" in r.text()
    assert 'value="4500"' in r.body and 'value="ms.example.net"' in r.body


def test_connections_crud_and_live_status(portal: Portal) -> None:
    c = admin(portal)
    pem = ec_pem()
    r = c.submit("connection/add", "connection/add", {
        "alias": "bob", "public_key": pem, "local_subnet": "10.1.0.0/24", "remote_subnet": "10.2.0.1/16",
        "active": "yes"})
    assert r.status == 200 and "Connection bob added." in r.text()
    assert "10.1.0.0/24 → 10.2.0.0/16" in r.text()  # normalized CIDR
    assert "DOWN" in r.text()
    (cid,) = [int(x) for x in re.findall(r'/connection/edit/(\d+)"', r.body)]
    r = c.submit("connection/add", "connection/add", {
        "alias": "bad alias", "public_key": "", "local_subnet": "10.1.0.0/33", "remote_subnet": "nope"})
    assert r.status == 400
    for msg in ("Alias invalid", "Public key is missing.", "Local subnet is not a valid subnet",
                "Remote subnet is not a valid subnet"):
        assert msg in r.text()
    r = c.submit("connection/add", "connection/add", {"alias": "bob", "public_key": ec_pem()})
    assert r.status == 400 and "already exists" in r.text()
    # the client daemon writes the status; the page shows it
    engine = make_engine(f"sqlite:///{portal.base / 'cli.sqlite'}")
    with make_session_factory(engine)() as s:
        data.set_connection_status(s, cid, 2)
        s.commit()
    assert "CONNECTING" in c.get("connection/list").text()
    with make_session_factory(engine)() as s:
        data.set_connection_status(s, cid, 1, error="no response from peer (connectivity checks failed)")
        s.commit()
    r = c.get("connection/list")
    assert "no response from peer (connectivity checks failed)" in r.text() and "DOWN" in r.text()
    engine.dispose()
    # edit: deactivate and clear subnets
    r = c.get(f"connection/edit/{cid}")
    assert "BEGIN PUBLIC KEY" in r.text()
    r = c.post(f"connection/edit/{cid}", {"csrf": r.csrf(), "alias": "bob2", "public_key": pem,
                                         "local_subnet": "", "remote_subnet": "fd00::/64"})
    assert r.status == 200 and "bob2" in r.text() and "(inactive)" in r.text()
    assert "dynamic → fd00::/64" in r.text()
    assert c.get("connection/edit/424242").status == 404
    r = c.post(f"connection/delete/{cid}", {"csrf": r.csrf()})
    assert "Connection bob2 deleted." in r.text()
