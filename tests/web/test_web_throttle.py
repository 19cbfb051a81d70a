"""Login throttling with a fake clock: addresses are blocked, accounts only slowed down (throttle.py),
in the throttle itself and through both portals in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from medweb_client import FakeClock, WsgiClient

from medmgr_web import client_manager, server_manager
from medmgr_web.security import hash_password
from medmgr_web.throttle import LoginThrottle, ThrottleConfig, address_key, backoff

PASSWORD = "correct horse battery"


def throttle(clock: FakeClock, **kw: float) -> LoginThrottle:
    return LoginThrottle(ThrottleConfig(**kw), clock, clock.sleep)  # type: ignore[arg-type]


def fail(t: LoginThrottle, addr: str, login: str) -> float:
    """One failed attempt; the delay it was given.  The address must not be blocked."""
    a = t.begin(addr, login)
    assert a.retry_after == 0, (addr, login)
    t.failed(a)
    return a.delay


def test_backoff_schedule() -> None:
    assert [backoff(n, 3, 0.5, 4.0) for n in range(9)] == [0, 0, 0, 0.5, 1, 2, 4, 4, 4]
    assert backoff(10**9, 3, 0.5, 4.0) == 4.0  # no overflow
    assert backoff(5, 0, 1.0, 3.0) == 3.0


def test_address_is_blocked_for_the_window_after_its_limit() -> None:
    clock = FakeClock()
    t = throttle(clock, address_limit=10, window=900)
    start = clock.now
    for i in range(10):  # one second apart, spread over accounts
        fail(t, "203.0.113.9", f"user{i % 3}")
        clock.advance(1)
    a = t.begin("203.0.113.9", "anyone")
    assert a.retry_after == 890 and a.delay == 0  # until the first failure is 900 s old
    clock.now = start + 899.5
    assert t.begin("203.0.113.9", "anyone").retry_after == 1
    assert t.begin("203.0.113.10", "anyone").retry_after == 0  # another address is not concerned
    clock.now = start + 900
    a = t.begin("203.0.113.9", "user0")  # the first failure left the window: one more try
    assert a.retry_after == 0
    t.failed(a)
    assert t.begin("203.0.113.9", "user0").retry_after == 1


def test_a_stranger_cannot_lock_the_owner_out() -> None:
    clock = FakeClock()
    t = throttle(clock, address_limit=10, account_free=3, delay_base=0.5, delay_max=4.0, window=900)
    strangers = [f"198.51.100.{i}" for i in range(1, 6)]
    for addr in strangers:
        for _ in range(10):
            fail(t, addr, "Alice")
        assert t.begin(addr, "alice").retry_after > 0  # each stranger's address is blocked
    owner = t.begin("192.0.2.7", "alice")  # the account name's case does not matter
    # 50 failures; the account keeps count only a little beyond where the delay stops growing (3 + 3 + 2)
    assert owner.retry_after == 0 and owner.delay == 4.0 and owner.recent == 8
    t.wait(owner)
    assert clock.slept == [4.0]
    t.succeeded(owner)
    after = t.begin("192.0.2.7", "alice")  # the owner's login cleared the account's failures
    assert after.delay == 0 and after.recent == 0


def test_account_delay_grows_and_is_forgotten_after_the_window() -> None:
    clock = FakeClock()
    t = throttle(clock, address_limit=2, account_free=3, delay_base=0.5, delay_max=4.0, window=60)
    delays = [fail(t, f"192.0.2.{i}", "bob") for i in range(1, 9)]  # new address each time
    assert delays == [0, 0, 0, 0.5, 1.0, 2.0, 4.0, 4.0]
    clock.advance(60)
    assert t.begin("192.0.2.100", "bob").delay == 0


def test_parallel_attempts_count_before_they_finish() -> None:
    """Attempts still running count as failures: parallel ones neither slip under the address limit
    nor all get the first, short delays."""
    clock = FakeClock()
    t = throttle(clock, address_limit=10, account_free=3)
    running = [t.begin("203.0.113.5", "carol") for _ in range(10)]
    assert [a.delay for a in running] == [0, 0, 0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(a.retry_after == 0 for a in running)
    assert t.begin("203.0.113.5", "carol").retry_after > 0


def test_a_right_password_is_refunded_not_counted() -> None:
    clock = FakeClock()
    t = throttle(clock, address_limit=3, account_free=3)
    fail(t, "192.0.2.1", "dave")
    fail(t, "192.0.2.1", "erin")
    ok = t.begin("192.0.2.1", "erin")
    t.succeeded(ok)  # charged at the start, refunded now: the address still has 2 failures
    fail(t, "192.0.2.1", "frank")
    assert t.begin("192.0.2.1", "frank").retry_after > 0
    # but a success does not wipe the address's failures (an attacker's own account cannot reset them)
    t2 = throttle(clock, address_limit=2)
    fail(t2, "192.0.2.2", "x")
    t2.succeeded(t2.begin("192.0.2.2", "mine"))
    fail(t2, "192.0.2.2", "y")
    assert t2.begin("192.0.2.2", "z").retry_after > 0


def test_memory_is_bounded_and_stale_entries_swept() -> None:
    clock = FakeClock()
    t = throttle(clock, address_limit=5, window=60, max_keys=100)
    for i in range(1000):
        fail(t, f"10.0.{i // 250}.{i % 250}", f"user{i}")
    assert t.stats() == {"addresses_failing": 100, "accounts_failing": 100}
    clock.advance(61)
    fail(t, "10.9.9.9", "late")  # every addition sweeps what left the window
    assert t.stats() == {"addresses_failing": 1, "accounts_failing": 1}


@pytest.mark.parametrize(("remote", "key"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # one host's /64
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::/64"),
    ("", ""),
    ("not an address", "not an address"),
])
def test_address_key(remote: str, key: str) -> None:
    assert address_key(remote) == key


def test_wait_sleeps_only_for_a_delay() -> None:
    clock = FakeClock()
    t = throttle(clock, account_free=1, delay_base=0.25)
    t.wait(t.begin("192.0.2.1", "gina"))
    t.wait(t.begin("192.0.2.1", "gina"))
    assert clock.slept == [0.25]


# -- through the portals, in process -------------------------------------------------------------


def test_server_manager_owner_logs_in_while_a_stranger_is_blocked(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = server_manager.ServerManagerConfig(throttle=ThrottleConfig(address_limit=6, account_free=3))
    app = server_manager.create_app(f"sqlite:///{tmp_path / 'med.sqlite'}", cfg, clock=clock, sleep=clock.sleep)
    owner = WsgiClient(app, "192.0.2.10")
    r = owner.submit("user/add", "user/add", {"new_login": "alice", "new_password": PASSWORD,
                                              "confirm_password": PASSWORD}, follow=False)
    assert r.status == 303
    stranger = WsgiClient(app, "203.0.113.66")
    for _ in range(6):
        r = stranger.submit("user/login", "user/login", {"login": "alice", "password": "guess"}, follow=False)
        assert r.status == 401
    r = stranger.submit("user/login", "user/login", {"login": "alice", "password": PASSWORD}, follow=False)
    # blocked until the first failure is 900 s old; the fake sleeps moved the clock by 3.5 s
    assert r.status == 429 and r.headers["retry-after"] == "897"
    assert "Too many failed login attempts from your address. Try again in 897 seconds." in r.text()
    assert clock.slept == [0.5, 1.0, 2.0]  # the stranger's 4th to 6th guesses waited
    owner = WsgiClient(app, "192.0.2.10")
    r = owner.submit("user/login", "user/login", {"login": "alice", "password": PASSWORD}, follow=False)
    assert r.status == 303 and r.location == "/srv/peer/list"
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]  # the owner waited too, and got in


def test_client_manager_admin_cannot_be_locked_out(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = client_manager.ClientManagerConfig(hash_password(PASSWORD),
                                             throttle=ThrottleConfig(address_limit=10, delay_max=2.0))
    app = client_manager.create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}", cfg, clock=clock, sleep=clock.sleep)
    for i in range(3):  # three addresses, ten guesses each: all blocked
        stranger = WsgiClient(app, f"2001:db8:{i}::1", base="/cli")
        for _ in range(10):
            r = stranger.submit("user/login", "user/login", {"password": "guess"}, follow=False)
            assert r.status == 401
        same_64 = WsgiClient(app, f"2001:db8:{i}::2", base="/cli")
        assert same_64.submit("user/login", "user/login", {"password": PASSWORD}, follow=False).status == 429
    assert max(clock.slept) == 2.0
    admin = WsgiClient(app, "2001:db8:ff::1", base="/cli")
    r = admin.submit("user/login", "user/login", {"password": PASSWORD}, follow=False)
    assert r.status == 303 and r.location == "/cli/connection/list"
