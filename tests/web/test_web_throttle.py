"""Login throttling with a fake clock: addresses are blocked, accounts only slowed down, the counts
shared by every process on one database and kept across restarts (throttle.py); in the throttle
itself on SQLite, PostgreSQL and MariaDB, through both portals in process, and behind lighttpd with
two FastCGI processes."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, event, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from med_db.engine import create_all, make_engine, make_session_factory
from med_db.models import WebLoginFailure, WebLoginLock
from med_db.schema import load_schema
from medmgr_web import client_manager, server_manager
from medmgr_web.security import hash_password
from medmgr_web.throttle import (
    ACCOUNT,
    ADDRESS,
    LOCK_TRIES,
    SWEEP_EVERY,
    LoginThrottle,
    ThrottleBusy,
    ThrottleConfig,
    account_subject,
    address_key,
    backoff,
)
from tests.web.medweb_client import FakeClock, WebClient, WsgiClient
from tests.web.webtools import Portal, fresh_address

PASSWORD = "correct horse battery"


def open_db(url: str) -> sessionmaker[Session]:
    """A new engine on ``url``: what one portal process has (its tables made if missing)."""
    engine = make_engine(url)
    create_all(engine)
    return make_session_factory(engine)


@pytest.fixture
def db(db_url: str) -> str:
    """An empty med_db (SQLite, PostgreSQL, MariaDB)."""
    return db_url


def throttle(db: str, clock: FakeClock, portal: str = "medsrv", **kw: float) -> LoginThrottle:
    """A throttle as one portal process has it: an engine of its own on the database ``db``."""
    return LoginThrottle(ThrottleConfig(**kw), open_db(db), portal, clock, clock.sleep)  # type: ignore[arg-type]


def fail(t: LoginThrottle, addr: str, login: str) -> float:
    """One failed attempt; the delay it was given.  The address must not be blocked."""
    a = t.begin(addr, login)
    assert a.retry_after == 0, (addr, login)
    t.failed(a)
    return a.delay


def rows(t: LoginThrottle, kind: str | None = None, subject: str | None = None) -> int:
    """The portal's web_login_failure rows (of one kind, one subject)."""
    f = WebLoginFailure
    q = select(func.count()).select_from(f).where(f.portal == t.portal)
    if kind is not None:
        q = q.where(f.kind == kind)
    if subject is not None:
        q = q.where(f.subject == subject)
    with t.session_factory() as s:
        return s.scalar(q) or 0


def locks(t: LoginThrottle) -> int:
    """The portal's web_login_lock rows."""
    with t.session_factory() as s:
        return s.scalar(select(func.count()).select_from(WebLoginLock).where(WebLoginLock.portal == t.portal)) or 0


def test_backoff_schedule() -> None:
    assert [backoff(n, 3, 0.5, 4.0) for n in range(9)] == [0, 0, 0, 0.5, 1, 2, 4, 4, 4]
    assert backoff(10**9, 3, 0.5, 4.0) == 4.0  # no overflow
    assert backoff(5, 0, 1.0, 3.0) == 3.0
    assert ThrottleConfig(account_free=3, delay_base=0.5, delay_max=4.0).account_keep == 8


def test_address_is_blocked_for_the_window_after_its_limit(db: str) -> None:
    clock = FakeClock()
    t = throttle(db, clock, address_limit=10, window=900)
    start = clock.now
    for i in range(10):  # one second apart, spread over accounts
        fail(t, "203.0.113.9", f"user{i % 3}")
        clock.advance(1)
    a = t.begin("203.0.113.9", "anyone")
    assert a.retry_after == 890 and a.delay == 0  # until the first failure is 900 s old
    assert rows(t, ADDRESS) == 10  # a refused attempt leaves no row
    clock.now = start + 899.5
    assert t.begin("203.0.113.9", "anyone").retry_after == 1
    assert t.begin("203.0.113.10", "anyone").retry_after == 0  # another address is not concerned
    clock.now = start + 900
    a = t.begin("203.0.113.9", "user0")  # the first failure left the window: one more try
    assert a.retry_after == 0
    t.failed(a)
    assert t.begin("203.0.113.9", "user0").retry_after == 1


def test_a_stranger_cannot_lock_the_owner_out(db: str) -> None:
    clock = FakeClock()
    t = throttle(db, clock, address_limit=10, account_free=3, delay_base=0.5, delay_max=4.0, window=900)
    strangers = [f"198.51.100.{i}" for i in range(1, 6)]
    for addr in strangers:
        for _ in range(10):
            fail(t, addr, "Alice")
        assert t.begin(addr, "alice").retry_after > 0  # each stranger's address is blocked
    owner = t.begin("192.0.2.7", "alice")  # the account name's case does not matter
    # 50 failures; the account keeps count only a little beyond where the delay stops growing (3 + 3 + 2)
    assert owner.retry_after == 0 and owner.delay == 4.0 and owner.recent == 8
    assert rows(t, ACCOUNT, account_subject("alice")) == 8  # the newest 8, the owner's own attempt included
    t.wait(owner)
    assert clock.slept == [4.0]
    t.succeeded(owner)
    assert rows(t, ACCOUNT) == 0  # the owner's login cleared the account's failures
    after = t.begin("192.0.2.7", "alice")
    assert after.delay == 0 and after.recent == 0


def test_account_delay_grows_and_is_forgotten_after_the_window(db: str) -> None:
    clock = FakeClock()
    t = throttle(db, clock, address_limit=2, account_free=3, delay_base=0.5, delay_max=4.0, window=60)
    delays = [fail(t, f"192.0.2.{i}", "bob") for i in range(1, 9)]  # new address each time
    assert delays == [0, 0, 0, 0.5, 1.0, 2.0, 4.0, 4.0]
    clock.advance(60)
    assert t.begin("192.0.2.100", "bob").delay == 0


def test_parallel_attempts_count_before_they_finish(db: str) -> None:
    """Attempts still running count as failures: parallel ones neither slip under the address limit
    nor all get the first, short delays."""
    clock = FakeClock()
    t = throttle(db, clock, address_limit=10, account_free=3)
    running = [t.begin("203.0.113.5", "carol") for _ in range(10)]
    assert [a.delay for a in running] == [0, 0, 0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(a.retry_after == 0 for a in running)
    assert t.begin("203.0.113.5", "carol").retry_after > 0


def test_a_right_password_is_refunded_not_counted(db: str) -> None:
    clock = FakeClock()
    t = throttle(db, clock, address_limit=3, account_free=3)
    fail(t, "192.0.2.1", "dave")
    fail(t, "192.0.2.1", "erin")
    ok = t.begin("192.0.2.1", "erin")
    t.succeeded(ok)  # charged at the start, refunded now: the address still has 2 failures
    assert rows(t, ADDRESS) == 2
    fail(t, "192.0.2.1", "frank")
    assert t.begin("192.0.2.1", "frank").retry_after > 0
    # but a success does not wipe the address's failures (an attacker's own account cannot reset them);
    # another portal on the same database keeps counts of its own
    t2 = throttle(db, clock, portal="medcli", address_limit=2)
    fail(t2, "192.0.2.2", "x")
    t2.succeeded(t2.begin("192.0.2.2", "mine"))
    fail(t2, "192.0.2.2", "y")
    assert t2.begin("192.0.2.2", "z").retry_after > 0
    assert t2.begin("192.0.2.1", "z").retry_after == 0  # blocked in medsrv, not in medcli


def test_processes_share_the_counts_and_a_restart_keeps_them(db: str) -> None:
    """Two throttles with engines of their own on one database stand for two FastCGI processes: the
    address limit is one for both, a refund in one is seen by the other, the account's delay grows
    with the failures of both; a third one (a restarted process) knows all of it."""
    clock = FakeClock()
    cfg = {"address_limit": 6, "account_free": 3, "delay_base": 0.5, "delay_max": 4.0, "window": 60}
    one, two = throttle(db, clock, **cfg), throttle(db, clock, **cfg)
    delays = [fail((one, two)[i % 2], "203.0.113.7", "victim") for i in range(5)]
    assert delays == [0, 0, 0, 0.5, 1.0]  # each process alone has seen at most 2 failures before
    ok = two.begin("203.0.113.7", "mine")
    assert ok.retry_after == 0 and ok.address_failures == 6
    two.succeeded(ok)  # refunded: 5 failures, one more try
    last = one.begin("203.0.113.7", "victim")
    assert last.retry_after == 0 and last.delay == 2.0
    one.failed(last)
    for t in (one, two):
        refused = t.begin("203.0.113.7", "victim")
        assert refused.retry_after == 60 and refused.delay == 0
    restarted = throttle(db, clock, **cfg)
    assert restarted.begin("203.0.113.7", "anyone").retry_after == 60
    owner = restarted.begin("192.0.2.7", "Victim")  # from elsewhere: not refused, only slowed down
    assert owner.retry_after == 0 and owner.delay == 4.0 and owner.recent == 6
    restarted.succeeded(owner)
    assert two.begin("192.0.2.8", "victim").delay == 0  # the owner's login cleared it for everyone
    assert one.stats() == two.stats() == {"addresses_failing": 2, "accounts_failing": 1, "failures_forgotten": 0,
                                          "logins_busy": 0}


def test_attempts_racing_on_several_processes_pass_exactly_the_limit(db: str) -> None:
    """Attempts from one address started at the same time in threads of three processes: each is
    judged while it holds the address's lock row, so exactly the address limit of them go on, whichever
    process serves them, and the rest are refused (leaving no row); the next attempt is refused."""
    clock = FakeClock()
    procs = [throttle(db, clock, address_limit=5, account_free=3) for _ in range(3)]
    start = threading.Barrier(16)
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        start.wait()
        a = procs[i % 3].begin("198.51.100.77", f"user{i}")
        with lock:
            results.append((a.retry_after, a.address_failures))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 16
    passed = sorted(n for r, n in results if r == 0)
    assert passed == [1, 2, 3, 4, 5]  # one at a time: each saw the ones before it
    assert all(r == 900 and n == 5 for r, n in results if r > 0)  # the window, on a clock standing still
    assert rows(procs[0], ADDRESS) == 5  # the refused ones left no row
    assert procs[1].begin("198.51.100.77", "late").retry_after > 0
    assert locks(procs[2]) == 1  # one lock row for the address


def test_lock_rows_are_swept_and_made_again(db: str) -> None:
    """An address's lock row goes with the window (or when another process deleted it in between), and
    the next attempt makes it again."""
    clock = FakeClock()
    t = throttle(db, clock, address_limit=2, window=60)
    fail(t, "192.0.2.30", "x")
    fail(t, "192.0.2.31", "x")
    assert locks(t) == 2
    clock.advance(30)
    fail(t, "192.0.2.31", "x")
    clock.advance(31)  # 192.0.2.30's only attempt left the window, 192.0.2.31's newest did not
    assert t.sweep() == 2 and locks(t) == 1
    with t.session_factory() as s:  # another process's sweep deleted the row: made again on use
        s.execute(delete(WebLoginLock))
        s.commit()
    fail(t, "192.0.2.31", "x")
    assert locks(t) == 1
    assert t.begin("192.0.2.31", "x").retry_after == 29  # 2 in the window: refused until the one at 30 s leaves


def test_rows_are_bounded_swept_and_capped(db: str) -> None:
    clock = FakeClock()
    t = throttle(db, clock, address_limit=5, window=60, max_rows=100)
    most = 0
    for i in range(300):  # a botnet: each address and account fails once
        fail(t, f"10.0.{i // 250}.{i % 250}", f"user{i}")
        most = max(most, rows(t))
    # swept every SWEEP_EVERY attempts: the cap plus what one process adds in between (two rows each)
    assert 100 < most <= 100 + 2 * SWEEP_EVERY
    assert t.sweep() == 100 and rows(t) == 100
    assert locks(t) == 100  # the addresses' lock rows are capped alike
    assert t.stats()["failures_forgotten"] == 500  # of the 600 rows made
    # the oldest were forgotten first: the newest 50 attempts are still counted, the first ones not
    f = WebLoginFailure
    with t.session_factory() as s:
        kept = set(s.scalars(select(f.subject).where(f.kind == ADDRESS)))
    assert kept == {address_key(f"10.0.{i // 250}.{i % 250}") for i in range(250, 300)}
    # one account: only its newest account_keep rows stay
    for i in range(20):
        fail(t, f"10.1.0.{i}", "target")
    assert rows(t, ACCOUNT, account_subject("target")) == t.account_keep == 8
    # the rows that left the window go at the next sweep, which is due after SWEEP_INTERVAL
    clock.advance(61)
    fail(t, "10.9.9.9", "late")
    assert rows(t) == 2
    assert t.stats() == {"addresses_failing": 1, "accounts_failing": 1, "failures_forgotten": 500,
                        "logins_busy": 0}


def test_an_existing_database_gains_the_table(tmp_path: Path) -> None:
    """A med_db made before the tables existed gets them (and their indexes) when a portal opens it."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    load_schema(engine)
    with engine.begin() as conn:
        conn.execute(text('DROP TABLE "web_login_failure"'))
        conn.execute(text('DROP TABLE "web_login_lock"'))
    assert not {"web_login_failure", "web_login_lock"} & set(inspect(engine).get_table_names())
    clock = FakeClock()
    t = throttle(url, clock)
    engine.dispose()  # its pooled connection predates the new tables
    indexes = {i["name"] for i in inspect(engine).get_indexes("web_login_failure")}
    assert indexes == {"ix_web_login_failure_subject", "ix_web_login_failure_started"}
    assert {i["name"] for i in inspect(engine).get_indexes("web_login_lock")} == {"ix_web_login_lock_used"}
    fail(t, "192.0.2.1", "x")
    assert rows(t) == 2 and locks(t) == 1


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


def test_wait_sleeps_only_for_a_delay(tmp_path: Path) -> None:
    clock = FakeClock()
    t = throttle(f"sqlite:///{tmp_path / 'med.sqlite'}", clock, account_free=1, delay_base=0.25)
    t.wait(t.begin("192.0.2.1", "gina"))
    t.wait(t.begin("192.0.2.1", "gina"))
    assert clock.slept == [0.25]


class SweepBeforeEachLock:
    """While on, every lock row of ``engine``'s SQLite database is deleted right before an attempt
    looks its own up, on the attempt's connection and in its transaction: a sweep (or another
    process) wins every round.  ``lookups``: the lock lookups seen."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lookups = 0
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM web_login_lock" in statement:
            self.lookups += 1
            cursor.connection.execute("DELETE FROM web_login_lock")  # type: ignore[attr-defined]

    def off(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)


def test_an_address_lock_never_had_is_a_typed_busy_error(tmp_path: Path) -> None:
    clock = FakeClock()
    t = throttle(f"sqlite:///{tmp_path / 'med.sqlite'}", clock)
    fail(t, "192.0.2.1", "gina")
    sweeper = SweepBeforeEachLock(t.session_factory.kw["bind"])
    with pytest.raises(ThrottleBusy) as info:
        t.begin("192.0.2.1", "gina")
    assert sweeper.lookups == LOCK_TRIES
    assert info.value.address == "192.0.2.1" and info.value.retry_after >= 1
    sweeper.off()
    assert rows(t, ADDRESS, "192.0.2.1") == 1  # the busy attempt counted nothing
    assert t.stats()["logins_busy"] == 1
    assert fail(t, "192.0.2.1", "gina") == 0.0  # the lock is to be had again: attempts go on
    assert rows(t, ADDRESS, "192.0.2.1") == 2


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


def test_portal_answers_a_busy_throttle_with_503_and_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    factory = open_db(f"sqlite:///{tmp_path / 'med.sqlite'}")
    app = server_manager.create_app(factory, clock=clock, sleep=clock.sleep)
    owner = WsgiClient(app, "192.0.2.10")
    r = owner.submit("user/add", "user/add", {"new_login": "alice", "new_password": PASSWORD,
                                              "confirm_password": PASSWORD}, follow=False)
    assert r.status == 303
    sweeper = SweepBeforeEachLock(factory.kw["bind"])
    r = WsgiClient(app, "198.51.100.7").submit("user/login", "user/login", {"login": "alice", "password": PASSWORD},
                                               follow=False)
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert "Too many login attempts at once from your address; this one was not checked." in r.text()
    assert sweeper.lookups == LOCK_TRIES
    sweeper.off()
    r = WsgiClient(app, "198.51.100.7").submit("user/login", "user/login", {"login": "alice", "password": PASSWORD},
                                               follow=False)
    assert r.status == 303  # the same login once the address's lock is to be had


# -- behind lighttpd, two FastCGI processes on one database ----------------------------------------


def test_two_fastcgi_processes_share_the_address_limit(portal: Portal) -> None:
    """/lim is two server manager processes on one database, taken in turn (6 failures per address,
    delays after 3 per account, at most 0.2 s): failures spread over both add up to one limit, which
    holds across a restart of both, while the owner, from another address, logs in (late)."""
    lim = portal.url + "/lim"
    login = "limvictim"  # /lim's database serves this test alone
    owner = WebClient(lim, source=fresh_address())
    r = owner.submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                              "confirm_password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    stranger = WebClient(lim, source=fresh_address())
    token = stranger.get("user/login").csrf()  # one form, posted again and again: each POST is the next process's
    for _ in range(6):
        r = stranger.post("user/login", {"csrf": token, "login": login, "password": "guess"})
        assert r.status == 401 and "Invalid username or password." in r.text()
    served = {name: portal.log(name).count(f"failed login to '{login}' from {stranger.source} ")
              for name in ("lim", "lim2")}
    assert sum(served.values()) == 6 and min(served.values()) >= 1, served  # each process saw some
    for _ in range(2):  # the 7th and 8th: refused by whichever process serves them
        r = stranger.post("user/login", {"csrf": token, "login": login, "password": PASSWORD})
        m = re.search(r"Try again in (\d+) seconds\.", r.text())
        assert r.status == 429 and m is not None and 1 <= int(m[1]) <= 60, r.text()
    # a restart of both processes forgets nothing
    portal.restart("lim")
    portal.restart("lim2")
    r = stranger.post("user/login", {"csrf": token, "login": login, "password": PASSWORD})
    assert r.status == 429, r.text()
    # the owner from another address: not refused, answered after the account's delay, and in
    again = WebClient(lim, source=owner.source)
    r = again.submit("user/login", "user/login", {"login": login, "password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    # the account keeps count to 3 + 2 (with these settings the first delay is already the longest)
    line = f"login to '{login}' from {owner.source} after 5 or more failed attempts on the account " \
           "(answer delayed 0.2 s)"
    assert line in portal.log("lim") + portal.log("lim2")
