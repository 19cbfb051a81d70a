"""Login sessions and anonymous CSRF with a fake clock, in process: sessions exist only after a login,
are capped (the one idle the longest goes), expire when idle and are swept without being asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from wsgi_client import FakeClock, WsgiClient

from medmgr_web import server_manager
from medmgr_web.security import SessionStore, anon_csrf_ok, anon_csrf_token, new_csrf_nonce

PASSWORD = "correct horse battery"
TIMEOUT = 900.0


def test_store_idle_expiry() -> None:
    clock = FakeClock()
    store = SessionStore(TIMEOUT, clock=clock)
    s = store.new(1)
    clock.advance(TIMEOUT)
    assert store.get(s.sid) is s  # idle exactly the timeout: still valid, and refreshed
    clock.advance(TIMEOUT + 0.001)
    assert store.get(s.sid) is None and len(store) == 0
    assert store.get("") is None and store.get(None) is None


def test_store_sweeps_sessions_nobody_asks_for() -> None:
    clock = FakeClock()
    store = SessionStore(TIMEOUT, clock=clock)
    stale = [store.new(i) for i in range(100)]
    clock.advance(TIMEOUT / 2)
    live = store.new(1000)
    clock.advance(TIMEOUT / 2 + 1)
    assert store.get(live.sid) is live  # any lookup sweeps the expired ones, oldest first
    assert len(store) == 1 and all(store.get(s.sid) is None for s in stale)
    clock.advance(TIMEOUT + 1)
    assert store.sweep() == 0


def test_store_cap_evicts_the_session_idle_the_longest() -> None:
    clock = FakeClock()
    store = SessionStore(TIMEOUT, max_sessions=3, clock=clock)
    a, b, c = store.new(1), store.new(2), store.new(3)
    clock.advance(1)
    assert store.get(a.sid) is a  # a is used again: b is now the one idle the longest
    d = store.new(4)
    assert len(store) == 3 and store.evicted == 1
    assert store.get(b.sid) is None
    assert all(store.get(x.sid) is x for x in (a, c, d))
    store.drop_user(3)
    assert store.get(c.sid) is None and len(store) == 2


def test_anon_csrf_token() -> None:
    key, nonce = b"k" * 32, new_csrf_nonce()
    token = anon_csrf_token(key, nonce)
    assert anon_csrf_ok(key, nonce, token)
    assert not anon_csrf_ok(b"x" * 32, nonce, token)  # another process's secret
    assert not anon_csrf_ok(key, new_csrf_nonce(), token)  # another cookie
    assert not anon_csrf_ok(key, None, token) and not anon_csrf_ok(key, nonce, None)
    assert not anon_csrf_ok(key, nonce, token[:-1]) and not anon_csrf_ok(key, "short", anon_csrf_token(key, "short"))


@pytest.fixture
def app_clock(tmp_path: Path) -> tuple[server_manager.ServerManager, FakeClock]:
    clock = FakeClock()
    cfg = server_manager.ServerManagerConfig(session_timeout=TIMEOUT, max_sessions=50)
    return server_manager.create_app(f"sqlite:///{tmp_path / 'med.sqlite'}", cfg, clock=clock,
                                     sleep=clock.sleep), clock


def test_anonymous_requests_create_no_session(app_clock: tuple[server_manager.ServerManager, FakeClock]) -> None:
    app, _ = app_clock
    pages = ["user/login", "user/add", "user/help", "", "peer/list", "peer/edit/1", "static/style.css", "nope"]
    cookies: set[str] = set()
    for i in range(2000):
        c = WsgiClient(app)  # no cookie
        r = c.get(pages[i % len(pages)])
        assert r.status in (200, 303, 404)
        cookies.update(x.split("=", 1)[0] for x in r.set_cookies)
    assert len(app.store) == 0 and cookies == {"medsrv_csrf"}
    # the form cookie comes back: the page keeps it, and its token, instead of issuing another
    c = WsgiClient(app)
    first = c.get("user/login")
    again = c.get("user/add")
    assert again.set_cookies == [] and again.csrf() == first.csrf()


def test_login_logout_and_idle_expiry(app_clock: tuple[server_manager.ServerManager, FakeClock]) -> None:
    app, clock = app_clock
    c = WsgiClient(app)
    r = c.submit("user/add", {"new_login": "alice", "new_password": PASSWORD, "confirm_password": PASSWORD})
    assert r.status == 303 and len(app.store) == 1 and "medsrv_csrf" not in c.cookies
    assert "Welcome, alice!" in c.get("peer/list").text()
    r = c.request("POST", "user/logout", {"csrf": c.get("peer/list").csrf()})
    assert r.status == 303 and len(app.store) == 0 and "medsrv_sid" not in c.cookies
    assert c.get("peer/list").status == 303  # logged out
    # log in again; idle for less than the timeout, then for more
    r = c.submit("user/login", {"login": "alice", "password": PASSWORD})
    assert r.status == 303 and r.location == "/srv/peer/list" and len(app.store) == 1
    clock.advance(TIMEOUT - 1)
    assert c.get("peer/list").status == 200
    clock.advance(TIMEOUT + 1)
    r = c.get("peer/list")
    assert r.status == 303 and r.location == "/srv/user/login" and len(app.store) == 0
    assert "medsrv_sid" not in c.cookies  # the stale cookie was cleared


def test_expired_sessions_are_swept_and_capped(app_clock: tuple[server_manager.ServerManager, FakeClock]) -> None:
    app, clock = app_clock  # at most 50 sessions
    WsgiClient(app).submit("user/add", {"new_login": "bob", "new_password": PASSWORD, "confirm_password": PASSWORD})
    clients = []
    for _ in range(60):
        c = WsgiClient(app, "192.0.2.99")
        assert c.submit("user/login", {"login": "bob", "password": PASSWORD}).status == 303
        clients.append(c)
        clock.advance(1)
    assert len(app.store) == 50 and app.store.evicted == 11  # 61 logins in all (with the registration)
    assert clients[9].get("peer/list").status == 303  # the oldest were dropped
    assert clients[10].get("peer/list").status == 200
    clock.advance(TIMEOUT + 1)
    assert "sessions=0 " in app.stats()  # swept without anyone asking for them


def test_csrf_on_anonymous_forms(app_clock: tuple[server_manager.ServerManager, FakeClock]) -> None:
    app, _ = app_clock
    form = {"new_login": "mallory", "new_password": PASSWORD, "confirm_password": PASSWORD}
    c = WsgiClient(app)
    token = c.get("user/add").csrf()
    r = c.request("POST", "user/add", form)
    assert r.status == 403 and "did not come from this site" in r.text()
    r = WsgiClient(app).request("POST", "user/add", {"csrf": token, **form})  # no cookie
    assert r.status == 403 and "no form cookie" in r.text()
    other = WsgiClient(app, cookies={"medsrv_csrf": new_csrf_nonce()})
    assert other.request("POST", "user/add", {"csrf": token, **form}).status == 403
    # a token from another process (restart: new secret) no longer fits
    restarted = server_manager.create_app("sqlite:///:memory:")
    assert WsgiClient(restarted, cookies=dict(c.cookies)).request(
        "POST", "user/add", {"csrf": token, **form}).status == 403
    assert c.request("POST", "user/add", {"csrf": token, **form}).status == 303
    assert len(app.store) == 1
