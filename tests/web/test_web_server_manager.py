"""Server manager over HTTP through a real lighttpd (FastCGI): accounts and peers."""

from __future__ import annotations

import datetime
import hashlib
import html
import itertools
import re
import sqlite3
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.web.medweb_client import Reply, WebClient
from tests.web.webtools import Portal

pytestmark = pytest.mark.web
PASSWORD = "correct horse battery"
REFERENCE_KEYID_HEX = "ed90e64feca21f4b6897992422e0de21b9d62629"
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


# -- public key formats ---------------------------------------------------------------------------------


def _key_forms(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """One RSA public key as people paste it: PEM SPKI, PEM PKCS#1, X.509 certificate, OpenSSH line."""
    pub = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "laptop.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub).serial_number(7)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    enc, fmt = serialization.Encoding, serialization.PublicFormat
    return {
        "spki": pub.public_bytes(enc.PEM, fmt.SubjectPublicKeyInfo).decode(),
        "pkcs1": pub.public_bytes(enc.PEM, fmt.PKCS1).decode(),
        "certificate": cert.public_bytes(enc.PEM).decode(),
        "openssh": pub.public_bytes(enc.OpenSSH, fmt.OpenSSH).decode() + " root@laptop\n",
    }


def _stored_peer(portal: Portal, pid: int) -> tuple[bytes, bytes]:
    db = sqlite3.connect(portal.base / "srv.sqlite")
    try:
        keyid, spki = db.execute('SELECT keyid, public_key FROM peer WHERE id = ?', (pid,)).fetchone()
        return bytes(keyid), bytes(spki)
    finally:
        db.close()


def test_peer_key_in_every_format_gives_the_same_keyid(portal: Portal) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forms = _key_forms(key)
    spki_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    keyid = hashlib.sha1(key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.PKCS1)).digest()
    text, colon = "keyid:#" + keyid.hex(), ":".join(f"{b:02x}" for b in keyid)
    for kind, pasted in forms.items():
        c, _ = register(portal)  # a key is registered once: each form in turn, deleted afterwards
        r = add_peer(c, "laptop", pasted)
        assert r.status == 200, (kind, r.text())
        assert f"Peer laptop added, identity {text}." in r.text(), kind
        assert text in r.text() and colon in r.text(), kind  # the list: swanctl form and colon form
        (pid,) = peer_ids(r)
        assert _stored_peer(portal, pid) == (keyid, spki_der), kind
        r = c.get(f"peer/edit/{pid}")  # shown back as the PEM public key, whatever was pasted
        assert html.unescape(re.search(r'<textarea id="public_key"[^>]*>(.*?)</textarea>', r.body, re.S)
                             .group(1)).strip() == forms["spki"].strip(), kind  # type: ignore[union-attr]
        assert text in r.text()
        assert c.post(f"peer/delete/{pid}", {"csrf": r.csrf()}).status == 200


def test_bad_paste_names_the_formats_and_keeps_the_form(portal: Portal) -> None:
    c, _ = register(portal)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _key_forms(key)["certificate"]
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    cases = [
        ("garbage", "Parsing public key failed."),
        (cert.replace(cert.splitlines()[5], "AAAA"), "CERTIFICATE block is damaged or incomplete"),
        ("ssh-rsa AAAAB3NzaC1yc2EAAAAD comment", "OpenSSH ssh-rsa key is damaged"),
        (private, "This is a private key"),
    ]
    formats = ("a PEM public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), a PEM X.509 certificate "
               "(BEGIN CERTIFICATE) or an OpenSSH public key line (ssh-rsa AAAA")
    for pasted, message in cases:
        r = add_peer(c, "keepme", pasted)
        assert r.status == 400, message
        errors = r.text()
        assert message in errors and formats in errors, errors
        assert 'value="keepme"' in r.body  # the alias survives the error
        if "PRIVATE" in pasted:
            assert "PRIVATE KEY" not in r.body  # a pasted private key is never sent back
        else:
            assert html.escape(pasted.strip(), quote=False) in r.body  # nor is the paste lost
    assert "No peers yet" in c.get("peer/list").text()


# -- Help page: swanctl.conf per peer ---------------------------------------------------------------------


def _files(r: Reply) -> dict[str, str]:
    return {n: html.unescape(b) for n, b in
            re.findall(r'<pre class="file"[^>]*data-file="([^"]+)"[^>]*>(.*?)</pre>', r.body, re.S)}


def test_help_swanctl_conf_per_peer(portal: Portal) -> None:
    keys = {a: ec.generate_private_key(ec.SECP256R1()).public_key() for a in ("home", "my.laptop", "office")}
    kid = {a: "keyid:#" + hashlib.sha1(k.public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)).hexdigest()
           for a, k in keys.items()}
    c, _ = register(portal)
    anon = WebClient(portal.url + "/srv").get("user/help")
    assert 'id="swanctl"' not in anon.body and "log in" in anon.text()
    assert "No peers yet" in c.get("user/help").text()
    for alias, k in keys.items():
        assert add_peer(c, alias, pem_of(k)).status == 200
    ids = {a: int(p) for p, a in re.findall(r'/peer/edit/(\d+)">([^<]+)</a>', c.get("peer/list").body)}
    # office may reach only home (its access list); the others reach everybody who accepts them
    token = c.get(f"peer/access/{ids['office']}").csrf()
    assert c.post(f"peer/access/{ids['office']}", {"csrf": token, "scope": "listed",
                                                   f"target_{ids['home']}": "1"}).status == 200
    nets = urllib.parse.urlencode({f"net_{ids['home']}": "10.1.0.0/24", f"net_{ids['my.laptop']}": "10.9.0.7, fd00::/64",
                                   f"net_{ids['office']}": "10.3.0.0/16"})

    r = c.get(f"user/help?peer={ids['home']}&{nets}")
    assert r.status == 200 and not re.search(r'class="errors"', r.body)
    files = _files(r)
    assert set(files) == {"swanctl.conf", "pubkey/medsrv.pem", "pubkey/home.pem", "pubkey/my_laptop.pem",
                          "pubkey/office.pem"}
    assert files["pubkey/medsrv.pem"].strip() == portal.ms_pem.strip()
    assert files["pubkey/my_laptop.pem"].strip() == pem_of(keys["my.laptop"]).strip()
    conf = files["swanctl.conf"]
    # swanctl.conf: one setting per line, identities quoted (# starts a comment)
    settings = [ln.strip() for ln in conf.splitlines() if "=" in ln and not ln.lstrip().startswith("#")]
    assert all(s.count("=") == 1 and "{" not in s for s in settings), conf
    assert 'remote_addrs = ms.example.net' in settings and "mediation = yes" in settings
    assert f'id = "keyid:#{REFERENCE_KEYID_HEX}"' in settings  # the server's identity
    assert settings.count(f'id = "{kid["home"]}"') == 3  # local id of the mediation + 2 mediated conns
    assert "mediated_by = medsrv" in settings and f'mediation_peer = "{kid["office"]}"' in settings
    assert re.search(r"^  my_laptop \{$", conf, re.M) and re.search(r"^  office \{$", conf, re.M)
    assert "local_ts = 10.1.0.0/24" in settings and "remote_ts = 10.9.0.7/32, fd00::/64" in settings
    assert "remote_ts = 10.3.0.0/16" in settings and "dynamic" not in conf

    r = c.get(f"user/help?peer={ids['office']}&{nets}")
    conf = _files(r)["swanctl.conf"]
    assert re.search(r"^  home \{$", conf, re.M) and "my_laptop" not in conf  # office's list: home only
    r = c.get(f"user/help?peer={ids['my.laptop']}&{nets}")
    conf = _files(r)["swanctl.conf"]
    assert re.search(r"^  home \{$", conf, re.M) and not re.search(r"^  office \{", conf, re.M)  # refused
    assert "local_ts = 10.9.0.7/32, fd00::/64" in conf

    # no subnets: valid, with a notice; a bad one: a clear message, the form keeps the input
    r = c.get(f"user/help?peer={ids['home']}")
    assert "local_ts = dynamic" in _files(r)["swanctl.conf"] and "Enter the subnets above" in r.text()
    r = c.get(f"user/help?peer={ids['home']}&net_{ids['home']}=10.1.0.0%2F33")
    assert "home: \u201c10.1.0.0/33\u201d is not a subnet in CIDR notation" in r.text()
    assert 'value="10.1.0.0/33"' in r.body
    # someone else's peer id selects nothing of theirs: the first own peer is shown
    other, _ = register(portal)
    assert add_peer(other, "theirs", pem_of(ec.generate_private_key(ec.SECP256R1()).public_key())).status == 200
    r = other.get(f"user/help?peer={ids['home']}")
    assert "theirs" in _files(r)["swanctl.conf"] and kid["home"] not in r.body
