"""Security properties of the portals, over HTTP through lighttpd: password storage, session cookies,
CSRF, escaping, ownership, login throttling, idle timeout."""

from __future__ import annotations

import sqlite3
import time

import pytest
from conftest import SHORT_TIMEOUT, Portal
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from medweb_client import WebClient
from test_web_server_manager import PASSWORD, add_peer, new_login, peer_ids, register

from medmgr_web.security import hash_password, verify_password

pytestmark = pytest.mark.web


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_password_hash_is_salted_scrypt(portal: Portal) -> None:
    a, b = hash_password("same password", n=2**14), hash_password("same password", n=2**14)
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("same password", a) and not verify_password("other", a)
    assert not verify_password("x", "sha1$garbage")
    login = new_login("hash")
    register(portal, login)
    db = sqlite3.connect(portal.base / "srv.sqlite")
    (stored,) = db.execute('SELECT password FROM "user" WHERE login = ?', (login,)).fetchone()
    db.close()
    assert stored.startswith("scrypt$32768$8$1$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored)


def test_session_cookie_flags(portal: Portal) -> None:
    c = WebClient(portal.url + "/srv")
    r = c.get("user/login")
    (cookie,) = r.set_cookies
    assert cookie.startswith("medsrv_sid=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert len(cookie.split(";")[0].split("=", 1)[1]) >= 40  # 32 random bytes, urlsafe
    login = new_login()
    _, r = register(portal, login)
    # a new session id on login (no fixation)
    first = c.cookies["medsrv_sid"]
    r = c.submit("user/login", "user/login", {"login": login, "password": PASSWORD})
    assert c.cookies["medsrv_sid"] != first
    assert r.headers["x-frame-options"] == "DENY" and "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


def test_secure_flag_under_https() -> None:
    import io

    from medmgr_web.server_manager import create_app

    app = create_app("sqlite:///:memory:")
    seen: list[list[tuple[str, str]]] = []
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/user/login", "SCRIPT_NAME": "/srv",
           "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "https", "HTTPS": "on"}
    app(env, lambda status, headers: seen.append(headers))
    cookie = dict((k.lower(), v) for k, v in seen[0])["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_csrf_required_on_every_post(portal: Portal) -> None:
    c, _ = register(portal)
    token = c.get("peer/list").csrf()
    r = c.post("peer/add", {"alias": "x", "public_key": ec_pem()})
    assert r.status == 403 and "did not come from this site" in r.text()
    r = c.post("peer/add", {"csrf": token + "x", "alias": "x", "public_key": ec_pem()})
    assert r.status == 403
    assert peer_ids(c.get("peer/list")) == []
    # logout without token does nothing
    assert c.post("user/logout", {}).status == 403
    assert c.get("peer/list", follow=False).status == 200
    # anonymous forms too: a cross-site login/registration POST without a session is refused
    anon = WebClient(portal.url + "/srv")
    assert anon.post("user/add", {"new_login": "csrfvictim", "new_password": PASSWORD,
                                  "confirm_password": PASSWORD}).status == 403
    # GET never changes state
    assert c.get("user/delete", follow=False).status == 405


def test_output_is_escaped(portal: Portal) -> None:
    c, _ = register(portal)
    evil = '<script>alert(1)</script>"'
    r = add_peer(c, evil, ec_pem())
    assert r.status == 400
    assert "<script>alert(1)" not in r.body and "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in r.body
    r = c.submit("user/login", "user/login", {"login": evil, "password": "x"})
    assert "<script>alert(1)" not in r.body


def test_ownership_user_a_cannot_touch_user_b(portal: Portal) -> None:
    a, _ = register(portal)
    b, _ = register(portal)
    r = add_peer(b, "bobs", ec_pem())
    (pid,) = peer_ids(r)
    assert "bobs" not in a.get("peer/list").text()
    r = a.get(f"peer/edit/{pid}")
    assert r.status == 404 and "Peer not found." in r.text()
    token = a.get("peer/list").csrf()
    assert a.post(f"peer/edit/{pid}", {"csrf": token, "alias": "stolen", "public_key": ec_pem()}).status == 404
    assert a.post(f"peer/delete/{pid}", {"csrf": token}).status == 404
    # a nonexistent id looks the same as someone else's
    assert a.get(f"peer/edit/{pid + 100000}").status == 404
    assert a.get("peer/edit/notanumber").status == 404
    assert a.get("peer/edit/99999999999999999999999").status == 404
    r = b.get("peer/list")
    assert "bobs" in r.text() and "stolen" not in r.text()


def test_anonymous_access_is_limited(portal: Portal) -> None:
    anon = WebClient(portal.url + "/srv")
    for page in ("peer/list", "peer/add", "peer/edit/1", "user/edit"):
        r = anon.get(page, follow=False)
        assert r.status == 303 and r.location.endswith("/srv/user/login"), page
    for page in ("user/login", "user/add", "user/help"):
        assert anon.get(page).status == 200


def test_login_throttling_per_account_and_address(portal: Portal) -> None:
    strict = portal.url + "/strict"  # 3 failures per account, 6 per address, per 60 s
    login = new_login("victim")
    c = WebClient(strict)
    assert c.submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                             "confirm_password": PASSWORD}).status == 200
    att = WebClient(strict)
    for _ in range(3):
        assert att.submit("user/login", "user/login", {"login": login, "password": "guess"}).status == 401
    r = att.submit("user/login", "user/login", {"login": login, "password": PASSWORD})
    assert r.status == 429 and "Too many failed login attempts" in r.text()  # even the right password
    # per address: failures spread over other accounts still add up (3 + 3 = 6)
    for i in range(3):
        assert att.submit("user/login", "user/login", {"login": f"nobody{i}", "password": "g"}).status == 401
    r = att.submit("user/login", "user/login", {"login": new_login("other"), "password": "g"})
    assert r.status == 429


def test_idle_timeout(portal: Portal) -> None:
    strict = portal.url + "/strict"
    # a fresh address budget is not available here, so register (not throttled) rather than log in
    c = WebClient(strict)
    r = c.submit("user/add", "user/add", {"new_login": new_login("idle"), "new_password": PASSWORD,
                                          "confirm_password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    assert c.get("peer/list", follow=False).status == 200
    time.sleep(SHORT_TIMEOUT + 0.5)
    r = c.get("peer/list", follow=False)
    assert r.status == 303 and r.location.endswith("/strict/user/login")
