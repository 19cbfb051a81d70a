"""Security properties of the portals, over HTTP through lighttpd: password storage, session cookies,
CSRF, escaping, ownership, login throttling, idle timeout, sessions shared by FastCGI processes, no
session for anonymous requests."""

from __future__ import annotations

import http.client
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_web_server_manager import PASSWORD, add_peer, new_login, peer_ids, register

from medmgr_web.security import hash_password, verify_password
from tests.web.medweb_client import Reply, WebClient
from tests.web.webtools import SHORT_TIMEOUT, Portal, fresh_address

pytestmark = pytest.mark.web


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


ARGON2ID = "$argon2id$v=19$m=65536,t=3,p=4$"  # RFC 9106 §4, second recommended option


def test_password_hash_is_salted_argon2id(portal: Portal) -> None:
    a, b = hash_password("same password"), hash_password("same password")
    assert a != b and a.startswith(ARGON2ID)
    assert verify_password("same password", a) and not verify_password("other", a)
    for garbage in ("sha1$garbage", "scrypt$1$2$3$x$y", "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA", ""):
        assert not verify_password("x", garbage)
    login = new_login("hash")
    register(portal, login)
    db = sqlite3.connect(portal.base / "srv.sqlite")
    (stored,) = db.execute('SELECT password FROM "user" WHERE login = ?', (login,)).fetchone()
    db.close()
    assert stored.startswith(ARGON2ID) and PASSWORD not in stored
    assert verify_password(PASSWORD, stored)


def cookie_flags_ok(cookie: str, name: str) -> bool:
    value = cookie.split(";")[0].split("=", 1)[1]
    return cookie.startswith(f"{name}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie and \
        "Path=/srv;" in cookie and len(value) >= 40  # 160 random bits at least


def test_session_cookie_flags(portal: Portal) -> None:
    c = WebClient(portal.url + "/srv")
    r = c.get("user/login")
    # an anonymous page gets the form cookie only: no session
    (cookie,) = r.set_cookies
    assert cookie_flags_ok(cookie, "medsrv_csrf") and "Secure" not in cookie  # plain HTTP
    login = new_login()
    register(portal, login)
    # a session id chosen by someone else is not taken up (no fixation): login sets a fresh one
    c.cookies["medsrv_sid"] = "A" * 43
    r = c.submit("user/login", "user/login", {"login": login, "password": PASSWORD}, follow=False)
    assert r.status == 303
    sid = [x for x in r.set_cookies if x.startswith("medsrv_sid=")]
    assert len(sid) == 1 and cookie_flags_ok(sid[0], "medsrv_sid") and c.cookies["medsrv_sid"] != "A" * 43
    assert any(x.startswith("medsrv_csrf=;") and "Max-Age=0" in x for x in r.set_cookies)
    r = c.get("peer/list")
    assert r.status == 200 and r.set_cookies == []
    assert r.headers["x-frame-options"] == "DENY" and "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    # logging in again gives another session id
    first = c.cookies["medsrv_sid"]
    c.submit("user/login", "user/login", {"login": login, "password": PASSWORD})
    assert c.cookies["medsrv_sid"] != first


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
    # anonymous forms too: a cross-site registration POST without the form cookie is refused
    anon = WebClient(portal.url + "/srv")
    assert anon.post("user/add", {"new_login": "csrfvictim", "new_password": PASSWORD,
                                  "confirm_password": PASSWORD}).status == 403
    # GET never changes state
    assert c.get("user/delete", follow=False).status == 405


def test_csrf_protects_the_login_form(portal: Portal) -> None:
    """The login form has no server-side session behind it: its token is bound to the form cookie."""
    login = new_login("csrflogin")
    register(portal, login)
    form = {"login": login, "password": PASSWORD}
    c = WebClient(portal.url + "/srv", source=fresh_address())
    token = c.get("user/login").csrf()
    assert set(c.cookies) == {"medsrv_csrf"}
    # no token, a wrong token: refused, with the reason
    for bad in ({}, {"csrf": ""}, {"csrf": token[:-1]}, {"csrf": token + "x"}):
        r = c.post("user/login", {**bad, **form}, follow=False)
        assert r.status == 403 and "did not come from this site" in r.text(), bad
    # the token without its cookie (a cross-site POST: SameSite=Strict keeps the cookie home)
    nocookie = WebClient(portal.url + "/srv", source=c.source)
    r = nocookie.post("user/login", {"csrf": token, **form}, follow=False)
    assert r.status == 403 and "no form cookie" in r.text()
    # this token with another browser's form cookie, or with a made-up cookie: refused
    other = WebClient(portal.url + "/srv", source=c.source)
    other.get("user/login")
    for cookie in (other.cookies["medsrv_csrf"], "b" * 40, "short"):
        swapped = WebClient(portal.url + "/srv", cookies={"medsrv_csrf": cookie}, source=c.source)
        assert swapped.post("user/login", {"csrf": token, **form}, follow=False).status == 403, cookie
    # the real form logs in
    r = c.post("user/login", {"csrf": token, **form})
    assert r.status == 200 and "Your peers" in r.text()


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


def login_form(c: WebClient, login: str, password: str) -> Reply:
    return c.submit("user/login", "user/login", {"login": login, "password": password})


def test_a_stranger_cannot_lock_the_owner_out(portal: Portal) -> None:
    """Failures from one address block that address only; the account merely answers later."""
    strict = portal.url + "/strict"  # an address: 6 failures per 60 s; an account: delays after 3 (<= 0.2 s)
    login = new_login("victim")
    owner = WebClient(strict, source=fresh_address())
    r = owner.submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                              "confirm_password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    stranger = WebClient(strict, source=fresh_address())
    # 4 guesses at the victim and 2 at other accounts: the address's 6 failures add up
    for who in (login, login, login, login, new_login("nobody"), new_login("nobody")):
        r = login_form(stranger, who, "guess")
        assert r.status == 401 and "Invalid username or password." in r.text()
    # now the stranger's address is refused whatever it tries, the right password included
    for who, password in ((login, PASSWORD), (new_login("other"), "guess")):
        r = login_form(stranger, who, password)
        m = re.search(r"Too many failed login attempts from your address\. Try again in (\d+) seconds\.", r.text())
        assert r.status == 429 and m is not None and 1 <= int(m[1]) <= 60, r.text()
        assert r.headers["retry-after"] == m[1]
    # the owner, from another address, logs in: the account was never locked
    again = WebClient(strict, source=owner.source)
    r = login_form(again, login, PASSWORD)
    assert r.status == 200 and "Your peers" in r.text()
    # and a third address is not blocked: a wrong password there is just wrong
    assert login_form(WebClient(strict, source=fresh_address()), login, "guess").status == 401
    # what the portal logged: the delays it chose (growing after 3 failures), the block, the owner's login
    log = portal.log("strict")
    for delay in ("0.0", "0.0", "0.0", "0.2"):
        line = f"failed login to '{login}' from {stranger.source} (answer delayed {delay} s)"
        assert line in log
        log = log[log.index(line) + len(line):]
    assert f"logins from {stranger.source} refused for up to 60 s" in log
    assert f"login to '{login}' from {owner.source} after 4 failed attempts on the account " \
           "(answer delayed 0.2 s)" in log


def test_anonymous_requests_cost_no_session(portal: Portal) -> None:
    """Thousands of cookie-less GETs (any page, public or not) leave the number of sessions alone."""
    paths = ["/srv/user/login", "/srv/user/add", "/srv/user/help", "/srv/", "/srv/peer/list",
             "/srv/peer/edit/1", "/srv/static/style.css", "/srv/no/such/page"]

    def run(k: int) -> tuple[set[str], set[int]]:
        names: set[str] = set()
        statuses: set[int] = set()
        conn = http.client.HTTPConnection("127.0.0.1", portal.port, timeout=30)
        for i in range(500):
            conn.request("GET", paths[(i + k) % len(paths)])
            resp = conn.getresponse()
            resp.read()
            statuses.add(resp.status)
            names.update(c.split("=", 1)[0] for c in resp.headers.get_all("Set-Cookie") or [])
        conn.close()
        return names, statuses

    before = portal.stats("srv")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    after = portal.stats("srv")
    assert set().union(*(n for n, _ in results)) == {"medsrv_csrf"}  # never a session cookie
    assert set().union(*(s for _, s in results)) == {200, 303, 404}
    assert after["sessions"] == before["sessions"]
    # the count is live: a login adds one
    _c, r = register(portal)
    assert r.status == 200 and portal.stats("srv")["sessions"] == after["sessions"] + 1


def age_sessions(portal: Portal, app: str, seconds: int) -> None:
    """Move the last use of every session of ``app`` back by ``seconds``, as if that much time had
    passed (the database is the only place sessions live)."""
    db = sqlite3.connect(portal.base / f"{app}.sqlite")
    with db:
        db.execute("UPDATE web_session SET last_seen = datetime(last_seen, ?)", (f"-{seconds} seconds",))
    db.close()


def test_idle_timeout(portal: Portal) -> None:
    strict = portal.url + "/strict"
    login = new_login("idle")
    WebClient(strict).submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                                      "confirm_password": PASSWORD})
    c = WebClient(strict, source=fresh_address())
    r = login_form(c, login, PASSWORD)
    assert r.status == 200 and "Your peers" in r.text()
    age_sessions(portal, "strict", SHORT_TIMEOUT - 30)
    assert c.get("peer/list", follow=False).status == 200
    age_sessions(portal, "strict", SHORT_TIMEOUT + 1)
    r = c.get("peer/list", follow=False)
    assert r.status == 303 and r.location.endswith("/strict/user/login")
    assert any(x.startswith("medsrv_sid=;") and "Max-Age=0" in x for x in r.set_cookies)


def test_two_fastcgi_processes_share_sessions(portal: Portal) -> None:
    """/srv and /srv2 are two FastCGI processes on one database: a login made through one is honoured
    by the other, survives the other's restart, and a logout through the other ends it in both."""
    c, r = register(portal)
    assert r.status == 200
    sid = c.cookies["medsrv_sid"]
    other = WebClient(portal.url + "/srv2", cookies={"medsrv_sid": sid})
    r = other.get("peer/list", follow=False)
    assert r.status == 200 and "Your peers" in r.text()
    portal.restart("srv2")
    r = other.get("peer/list", follow=False)
    assert r.status == 200 and "Your peers" in r.text()
    assert add_peer(other, "via-srv2", ec_pem()).status == 200  # its CSRF token and its writes
    assert "via-srv2" in c.get("peer/list").text()
    r = other.post("user/logout", {"csrf": other.get("peer/list").csrf()}, follow=False)
    assert r.status == 303
    r = c.get("peer/list", follow=False)
    assert r.status == 303 and r.location.endswith("/srv/user/login")
