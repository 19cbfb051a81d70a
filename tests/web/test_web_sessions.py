"""Login sessions in med_db and CSRF, in process with Flask's test client and a fake clock: sessions
exist only after a login, are capped (the ones idle the longest go), expire when idle and are swept
without being asked for, survive a restart, are shared by every process on the database and revoked
everywhere by a logout."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medmgr_web import client_manager, server_manager
from medmgr_web.portal import Portal
from medmgr_web.security import hash_password, hash_scrypt, verify_password
from tests.web.medweb_client import FakeClock, WsgiClient

PASSWORD = "correct horse battery"
TIMEOUT = 900.0


def make_app(db: str, clock: FakeClock, **cfg: object) -> Portal:
    config = server_manager.ServerManagerConfig(session_timeout=TIMEOUT, **cfg)  # type: ignore[arg-type]
    return server_manager.create_app(db, config, clock=clock, sleep=clock.sleep)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'med.sqlite'}"


@pytest.fixture
def app_clock(db: str) -> tuple[Portal, FakeClock]:
    clock = FakeClock()
    return make_app(db, clock, max_sessions=50), clock


def register(app: Portal, login: str, addr: str = "192.0.2.1") -> WsgiClient:
    c = WsgiClient(app, addr)
    r = c.submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                          "confirm_password": PASSWORD}, follow=False)
    assert r.status == 303, r.text()
    return c


def login(c: WsgiClient, name: str, password: str = PASSWORD) -> int:
    return c.submit("user/login", "user/login", {"login": name, "password": password}, follow=False).status


def rows(db: str) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return conn.execute('SELECT "id", "portal", "user_id" FROM web_session').fetchall()
    finally:
        conn.close()


def test_anonymous_requests_create_no_session(app_clock: tuple[Portal, FakeClock], db: str) -> None:
    app, _ = app_clock
    pages = ["user/login", "user/add", "user/help", "", "peer/list", "peer/edit/1", "static/style.css", "nope"]
    cookies: set[str] = set()
    for i in range(400):
        c = WsgiClient(app)  # no cookie
        r = c.get(pages[i % len(pages)], follow=False)
        assert r.status in (200, 303, 404)
        cookies.update(x.split("=", 1)[0] for x in r.set_cookies)
    assert app.store.count() == 0 and rows(db) == [] and cookies == {"medsrv_csrf"}
    # the form cookie comes back: the page keeps it, and its token, instead of issuing another
    c = WsgiClient(app)
    first = c.get("user/login")
    again = c.get("user/add")
    assert again.set_cookies == [] and again.csrf() == first.csrf()


def test_login_logout_and_idle_expiry(app_clock: tuple[Portal, FakeClock], db: str) -> None:
    app, clock = app_clock
    c = register(app, "alice")
    assert app.store.count() == 1 and "medsrv_csrf" not in c.cookies
    (row_id, portal, _), = rows(db)
    assert portal == "medsrv" and c.cookies["medsrv_sid"] not in row_id  # the row holds a hash only
    assert "Welcome, alice!" in c.get("peer/list").text()
    r = c.post("user/logout", {"csrf": c.get("peer/list").csrf()}, follow=False)
    assert r.status == 303 and app.store.count() == 0 and "medsrv_sid" not in c.cookies
    assert c.get("peer/list", follow=False).status == 303  # logged out
    # log in again; idle for less than the timeout, then for exactly the timeout, then for more
    r = c.submit("user/login", "user/login", {"login": "alice", "password": PASSWORD}, follow=False)
    assert r.status == 303 and r.location == "/srv/peer/list" and app.store.count() == 1
    clock.advance(TIMEOUT - 1)
    assert c.get("peer/list", follow=False).status == 200
    clock.advance(TIMEOUT)
    assert c.get("peer/list", follow=False).status == 200  # idle exactly the timeout: still valid
    clock.advance(TIMEOUT + 0.001)
    r = c.get("peer/list", follow=False)
    assert r.status == 303 and r.location == "/srv/user/login" and app.store.count() == 0
    assert "medsrv_sid" not in c.cookies  # the stale cookie was cleared


def test_presence_polling_does_not_keep_a_login_alive(app_clock: tuple[Portal, FakeClock]) -> None:
    """The peer list polls peer/presence every few seconds; an open page alone must not defeat the
    idle timeout."""
    app, clock = app_clock
    c = register(app, "poller")
    for _ in range(int(TIMEOUT // 60) + 2):
        clock.advance(60)
        r = c.get("peer/presence", follow=False)
        if r.status != 200:
            break
    assert r.status == 303 and r.location == "/srv/user/login"
    assert clock() - FakeClock()() > TIMEOUT


def test_expired_sessions_are_swept_and_capped(db: str) -> None:
    clock = FakeClock()
    app = make_app(db, clock, max_sessions=5)
    register(app, "bob")
    clients = []
    for _ in range(8):
        c = WsgiClient(app, "192.0.2.99")
        assert login(c, "bob") == 303
        clients.append(c)
        clock.advance(1)
    assert app.store.count() == 5 and app.store.evicted == 4  # 9 logins in all (with the registration)
    assert clients[2].get("peer/list", follow=False).status == 303  # the oldest were dropped
    assert clients[3].get("peer/list", follow=False).status == 200
    clock.advance(TIMEOUT + 1)
    assert "sessions=0 " in app.stats() and rows(db) == []  # swept without anyone asking for them


def test_csrf_on_anonymous_forms(app_clock: tuple[Portal, FakeClock], tmp_path: Path) -> None:
    app, clock = app_clock
    form = {"new_login": "mallory", "new_password": PASSWORD, "confirm_password": PASSWORD}
    c = WsgiClient(app)
    token = c.get("user/add").csrf()
    r = c.post("user/add", form)
    assert r.status == 403 and "did not come from this site" in r.text()
    r = WsgiClient(app).post("user/add", {"csrf": token, **form})  # no cookie
    assert r.status == 403 and "no form cookie" in r.text()
    other = WsgiClient(app)
    other.get("user/login")
    swapped = WsgiClient(app, cookies={"medsrv_csrf": other.cookies["medsrv_csrf"]})
    assert swapped.post("user/add", {"csrf": token, **form}).status == 403
    # a token signed with another portal's key (another database) does not fit
    elsewhere = make_app(f"sqlite:///{tmp_path / 'other.sqlite'}", clock)
    assert WsgiClient(elsewhere, cookies=dict(c.cookies)).post("user/add", {"csrf": token, **form}).status == 403
    assert c.post("user/add", {"csrf": token, **form}, follow=False).status == 303
    assert app.store.count() == 1


def test_a_session_is_shared_by_processes_and_survives_a_restart(db_url: str) -> None:
    """Two app instances on one database (SQLite, PostgreSQL, MariaDB) stand for two FastCGI
    processes (or one, restarted): a login made by one is honoured by the other, an anonymous form of
    one is accepted by the other, a logout in one ends the session in both, and so does idleness."""
    db, clock = db_url, FakeClock()
    one, two = make_app(db, clock), make_app(db, clock)
    c = register(one, "carol")
    sid = c.cookies["medsrv_sid"]
    as_two = WsgiClient(two, cookies=c.cookies)  # the same browser, its next request served by `two`
    r = as_two.get("peer/list", follow=False)
    assert r.status == 200 and "Welcome, carol!" in r.text()  # even the flashed message travelled
    token = as_two.get("peer/list").csrf()
    pem = "ssh-rsa AAAA"  # any POST: the CSRF token of one process's page is good in the other
    assert WsgiClient(one, cookies=c.cookies).post("peer/add", {"csrf": token, "alias": "x",
                                                                "public_key": pem}).status == 400
    # an anonymous form rendered by one, posted to the other
    anon = WsgiClient(one)
    token = anon.get("user/login").csrf()
    r = WsgiClient(two, cookies=anon.cookies).post("user/login", {"csrf": token, "login": "carol",
                                                                  "password": PASSWORD}, follow=False)
    assert r.status == 303
    # a restart: a third instance on the same database knows the session
    three = make_app(db, clock)
    assert WsgiClient(three, cookies={"medsrv_sid": sid}).get("peer/list", follow=False).status == 200
    # logout in `two` revokes the session in `one` and `three` as well
    r = as_two.post("user/logout", {"csrf": as_two.get("peer/list").csrf()}, follow=False)
    assert r.status == 303 and "medsrv_sid" not in as_two.cookies
    for app in (one, three):
        stale = WsgiClient(app, cookies={"medsrv_sid": sid})
        r = stale.get("peer/list", follow=False)
        assert r.status == 303 and r.location == "/srv/user/login"
    # idle expiry is the same for every process: the database's last_seen (microseconds everywhere)
    c = WsgiClient(one)
    assert login(c, "carol") == 303
    clock.advance(TIMEOUT)
    assert WsgiClient(two, cookies=dict(c.cookies)).get("peer/list", follow=False).status == 200
    clock.advance(TIMEOUT + 0.001)
    assert c.get("peer/list", follow=False).status == 303 and one.store.count() == two.store.count() == 0


def test_deleting_the_account_ends_its_sessions_everywhere(db: str) -> None:
    clock = FakeClock()
    one, two = make_app(db, clock), make_app(db, clock)
    c = register(one, "dave")
    other = WsgiClient(two)
    assert login(other, "dave") == 303
    r = c.submit("user/edit", "user/delete", {"password": PASSWORD}, follow=False)
    assert r.status == 303 and one.store.count() == 0
    assert other.get("peer/list", follow=False).status == 303


def test_the_two_portals_keep_their_sessions_apart(db: str) -> None:
    """Both portals on one database: a server manager session is no client manager session."""
    clock = FakeClock()
    srv = make_app(db, clock)
    cli = client_manager.create_app(db, client_manager.ClientManagerConfig(hash_password(PASSWORD)),
                                    clock=clock, sleep=clock.sleep)
    c = register(srv, "erin")
    sid = c.cookies["medsrv_sid"]
    r = WsgiClient(cli, base="/cli", cookies={"medcli_sid": sid}).get("connection/list", follow=False)
    assert r.status == 303 and r.location == "/cli/user/login"
    assert srv.store.count() == 1 and cli.store.count() == 0


def test_session_cookie_flags_over_https(db: str) -> None:
    app = make_app(db, FakeClock())
    c = WsgiClient(app, scheme="https", headers={"Referer": "https://portal.test/srv/user/add"})
    cookie, = c.get("user/add").set_cookies
    assert cookie.startswith("medsrv_csrf=") and "Secure" in cookie and "HttpOnly" in cookie
    r = c.post("user/add", {"csrf": c.get("user/add").csrf(), "new_login": "frank", "new_password": PASSWORD,
                            "confirm_password": PASSWORD}, follow=False)
    sid = [x for x in r.set_cookies if x.startswith("medsrv_sid=")]
    assert r.status == 303 and len(sid) == 1
    assert "Secure" in sid[0] and "HttpOnly" in sid[0] and "SameSite=Strict" in sid[0] and "Path=/srv;" in sid[0]
    # under HTTPS a POST from another site (its Referer) is refused even with the right token
    other = WsgiClient(app, scheme="https", cookies=dict(c.cookies), headers={"Referer": "https://evil.test/"})
    assert other.post("user/logout", {"csrf": c.get("peer/list").csrf()}).status == 403


def test_scrypt_hashes_keep_working_and_are_rehashed_at_login(db: str) -> None:
    app = make_app(db, FakeClock())
    register(app, "gina")
    old = hash_scrypt(PASSWORD, n=2**14)
    conn = sqlite3.connect(db.removeprefix("sqlite:///"))
    with conn:
        conn.execute('UPDATE "user" SET password = ? WHERE login = ?', (old, "gina"))
    assert login(WsgiClient(app), "gina", "wrong password") == 401
    (stored,) = conn.execute('SELECT password FROM "user" WHERE login = ?', ("gina",)).fetchone()
    assert stored == old  # a failed login changes nothing
    assert login(WsgiClient(app), "gina") == 303
    (stored,) = conn.execute('SELECT password FROM "user" WHERE login = ?', ("gina",)).fetchone()
    conn.close()
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and verify_password(PASSWORD, stored)
    assert login(WsgiClient(app), "gina") == 303


def test_client_manager_accepts_an_scrypt_admin_hash(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = client_manager.ClientManagerConfig(hash_scrypt(PASSWORD, n=2**14))
    app = client_manager.create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}", cfg, clock=clock, sleep=clock.sleep)
    c = WsgiClient(app, base="/cli")
    assert c.submit("user/login", "user/login", {"password": "nope"}, follow=False).status == 401
    r = c.submit("user/login", "user/login", {"password": PASSWORD}, follow=False)
    assert r.status == 303 and r.location == "/cli/connection/list"
