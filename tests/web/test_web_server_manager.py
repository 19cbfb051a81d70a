"""Server manager over HTTP through a real lighttpd (FastCGI): accounts and peers."""

from __future__ import annotations

import itertools
import re

import pytest
from conftest import Portal
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from medweb_client import Reply, WebClient

pytestmark = pytest.mark.web
PASSWORD = "correct horse battery"
_names = itertools.count()


def new_login(prefix: str = "user") -> str:
    return f"{prefix}{next(_names)}"


def pem_of(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def register(portal: Portal, login: str | None = None, password: str = PASSWORD) -> tuple[WebClient, Reply]:
    c = WebClient(portal.url + "/srv")
    r = c.submit("user/add", "user/add", {
        "new_login": login or new_login(), "new_password": password, "confirm_password": password})
    return c, r


def add_peer(c: WebClient, alias: str, pem: str) -> Reply:
    return c.submit("peer/add", "peer/add", {"alias": alias, "public_key": pem})


def peer_ids(r: Reply) -> list[int]:
    return [int(x) for x in re.findall(r'/peer/edit/(\d+)"', r.body)]


def test_register_login_logout(portal: Portal) -> None:
    login = new_login("alice")
    c, r = register(portal, login)
    assert r.status == 200 and "Your peers" in r.text() and f"Welcome, {login}" in r.text()
    r = c.get("peer/list")
    assert "No peers yet" in r.text() and login in r.text()
    # logout is a POST with a CSRF token
    r = c.post("user/logout", {"csrf": r.csrf()})
    assert "Log in" in r.text()
    assert c.get("peer/list", follow=False).location.endswith("/srv/user/login")
    r = c.submit("user/login", "user/login", {"login": login, "password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    r = c.submit("user/login", "user/login", {"login": login, "password": "wrong password"})
    assert r.status == 401 and "Invalid username or password." in r.text()


@pytest.mark.parametrize("login,pw,confirm,message", [
    ("", PASSWORD, PASSWORD, "Username is missing."),
    ("bad name!", PASSWORD, PASSWORD, "Username invalid, valid characters: A-Z a-z 0-9 - _ @ ."),
    ("x" * 65, PASSWORD, PASSWORD, "Username invalid"),
    ("ünïcode", PASSWORD, PASSWORD, "Username invalid"),
    ("okname", "short", "short", "Password requires at least 8 characters."),
    ("okname", "", "", "Password is missing."),
    ("okname", PASSWORD, PASSWORD + "x", "Password not confirmed."),
])
def test_register_validation(portal: Portal, login: str, pw: str, confirm: str, message: str) -> None:
    c = WebClient(portal.url + "/srv")
    r = c.submit("user/add", "user/add", {"new_login": login, "new_password": pw, "confirm_password": confirm})
    assert r.status == 400
    assert message in r.text()


def test_register_duplicate(portal: Portal) -> None:
    login = new_login()
    register(portal, login)
    _, r = register(portal, login)
    assert r.status == 400 and "Username already exists." in r.text()


def test_peer_add_list_edit_delete(portal: Portal, reference_pem: str) -> None:
    c, _ = register(portal)
    r = add_peer(c, "sidv150", reference_pem)
    assert r.status == 200
    assert "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29" in r.text()
    assert "RSA 2048" in r.text() and "UTC" in r.text()  # key type and registered-since
    (pid,) = peer_ids(r)
    # edit shows the stored key re-encoded as PEM
    r = c.get(f"peer/edit/{pid}")
    assert "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzZRsIp99UrIdoctThOfc" in r.body
    ec_pem = pem_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    r = c.post(f"peer/edit/{pid}", {"csrf": r.csrf(), "alias": "renamed", "public_key": ec_pem})
    assert r.status == 200 and "renamed" in r.text() and "ECDSA secp256r1" in r.text()
    assert "ed:90:e6" not in r.text()
    r = c.post(f"peer/delete/{pid}", {"csrf": r.csrf()})
    assert "Peer renamed deleted." in r.text() and peer_ids(r) == []


def test_peer_errors(portal: Portal, reference_pem: str) -> None:
    c, _ = register(portal)
    short = pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    cases = [
        ({"alias": "", "public_key": reference_pem}, "Alias is missing."),
        ({"alias": "a b", "public_key": reference_pem}, "Alias invalid, valid characters"),
        ({"alias": "p", "public_key": ""}, "Public key is missing."),
        ({"alias": "p", "public_key": "garbage"}, "Parsing public key failed."),
        ({"alias": "p", "public_key": short}, "at least 2048 bits"),
        ({"alias": "p", "public_key": pem_of(ed25519.Ed25519PrivateKey.generate().public_key())},
         "Unsupported key type"),
    ]
    for form, message in cases:
        r = add_peer(c, form["alias"], form["public_key"])
        assert r.status == 400, form
        assert message in r.text(), (message, r.text())
    ec_pem = pem_of(ec.generate_private_key(ec.SECP384R1()).public_key())
    assert add_peer(c, "one", ec_pem).status == 200
    r = add_peer(c, "one", pem_of(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert r.status == 400 and "already have a peer named" in r.text()
    other, _ = register(portal)
    r = add_peer(other, "two", ec_pem)  # same key, other user
    assert r.status == 400 and "Peer already exists" in r.text()


def test_edit_account_and_delete_cascades(portal: Portal) -> None:
    login = new_login()
    c, _ = register(portal, login)
    assert add_peer(c, "p1", pem_of(ec.generate_private_key(ec.SECP256R1()).public_key())).status == 200
    r = c.submit("user/edit", "user/edit", {"new_login": login + "x", "old_password": "nope",
                                            "new_password": "", "confirm_password": ""})
    assert r.status == 400 and "Password verification failed." in r.text()
    r = c.submit("user/edit", "user/edit", {"new_login": login + "x", "old_password": PASSWORD,
                                            "new_password": "another password", "confirm_password": "another password"})
    assert r.status == 200 and "Account updated." in r.text()
    fresh = WebClient(portal.url + "/srv")
    r = fresh.submit("user/login", "user/login", {"login": login + "x", "password": "another password"})
    assert r.status == 200 and "p1" in r.text()
    r = c.submit("user/edit", "user/delete", {"password": "wrong"})
    assert r.status == 400 and "not deleted" in r.text()
    r = c.submit("user/edit", "user/delete", {"password": "another password"})
    assert "Log in" in r.text()
    # the other session of the deleted account is gone too, and so is the login
    assert fresh.get("peer/list", follow=False).status == 303
    r = fresh.submit("user/login", "user/login", {"login": login + "x", "password": "another password"})
    assert r.status == 401


def test_help_page_shows_configured_server(portal: Portal) -> None:
    r = WebClient(portal.url + "/srv").get("user/help")
    assert r.status == 200
    assert "ms.example.net" in r.text()
    assert "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29" in r.text()
    assert "keyid:#ed90e64feca21f4b6897992422e0de21b9d62629" in r.text()
    assert "BEGIN PUBLIC KEY" in r.text()


def test_static_assets_and_unknown_pages(portal: Portal) -> None:
    c = WebClient(portal.url + "/srv")
    page = c.get("user/login")
    for asset in re.findall(r'(?:href|src)="(/srv/static/[^"]+)"', page.body):
        r = c.get(asset)
        assert r.status == 200, asset
    assert c.get("static/style.css").headers["content-type"].startswith("text/css")
    assert c.get("static/../schema.sql").status == 404
    assert c.get("nothing/here").status == 404
    assert c.get("/srv/", follow=False).location.endswith("/srv/user/login")
