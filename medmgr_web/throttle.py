"""Login throttling that a stranger cannot turn against an account's owner.

Two limits, both over a sliding ``window``:

- per client address: after ``address_limit`` failed logins the address is refused ("try again in N
  seconds") until the oldest of those failures leaves the window;
- per account: no refusal ever, only a delay before the answer: none for the first ``account_free``
  failures, then ``delay_base`` doubling with each failure, at most ``delay_max`` seconds.  The owner,
  logging in from an address that is not blocked, gets in (a few seconds late at worst).

The counts live in med_db (table ``web_login_failure``, one row per attempt and kind), so every process
of a portal on one database shares them and a restart forgets nothing.  An attempt counts as a failure
from the moment it starts (its rows are committed before the password is looked at) and is refunded
when the password was right, so attempts sent in parallel, to any of the processes, see each other.
An address's attempts are judged one at a time: each holds the address's row of ``web_login_lock``
(SELECT ... FOR UPDATE on PostgreSQL and MySQL/MariaDB; on SQLite a write transaction, BEGIN
IMMEDIATE) while it counts and commits its rows, so of a burst from one address, spread over any
number of processes, exactly the first ``address_limit`` go on and the rest are refused; the account
delay grows with them.  The lock is held for a few statements on index ranges, never while the
password is checked or the delay runs.  An attempt that cannot have the row (``LOCK_TRIES`` rounds lost
to other attempts and the sweeps) is neither counted nor judged: ``ThrottleBusy``, which the portal
answers with 503 and ``Retry-After``.  The delay is a
sleep in the request's own thread (flup serves each request in a thread of its own) and is capped by
``delay_max``; it happens before the password is checked, holding no database connection, and its
length says nothing about the password.

Cost per login: a few statements on index ranges of at most ``address_limit`` + 1 and ``account_keep``
+ ``TRIM_SLACK`` rows (``ix_web_login_failure_subject``).  The table is bounded: an account keeps its
newest ``account_keep`` rows (enough for the delay to reach its cap), an address at most
``address_limit`` (a refused attempt leaves no row) and one lock row, and each process sweeps the rows
(and lock rows) older than the window, and the oldest beyond ``max_rows`` per portal, at most
``SWEEP_EVERY`` attempts or
``SWEEP_INTERVAL`` seconds apart.  So the table holds at most ``max_rows`` rows per portal plus
``2 * SWEEP_EVERY`` per process.  At the cap the oldest failures are forgotten early (logged as a
warning): a botnet that fails more than about ``max_rows / 2`` logins within the window gets its
earliest addresses unblocked before their window ends, and an account's delay may start again; the
owner is never locked out either way.

The client address is the FastCGI ``REMOTE_ADDR``: the TCP peer of lighttpd or Apache.  No forwarding
header is trusted here; behind another reverse proxy, the web server must restore the client address
(``deploy/README-medmgr.md``).  An IPv6 client is its /64, which one host usually holds whole.
Times come from ``clock``: wall-clock seconds, as the rows are shared between processes and outlive them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from med_db.models import WebLoginFailure, WebLoginLock

log = logging.getLogger("medmgr_web.throttle")

MAX_KEY = 128          # characters of an account name or address kept as a key
ADDRESS, ACCOUNT = "address", "account"  # web_login_failure.kind
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of one process (expired rows, the cap)
SWEEP_EVERY = 128      # attempts one process counts between two sweeps, at most
TRIM_SLACK = 8         # account rows beyond ``account_keep`` read (and deleted) at one attempt
DELETE_CHUNK = 500     # ids per DELETE ... IN when the cap is enforced
LOCK_TRIES = 5         # rounds of "lock the address's row, else create it" (a sweep may delete it between)
BUSY_RETRY_AFTER = 1   # seconds a client is told to wait when the address's lock row could not be had


class ThrottleBusy(Exception):
    """The address's lock row could not be had (``LOCK_TRIES`` rounds lost to other attempts and the
    sweeps): the attempt was neither counted nor judged.  The portal answers 503 with ``Retry-After``
    (``portal.py``); nothing is wrong with the server, many attempts from one address met at once."""

    def __init__(self, address: str, retry_after: int = BUSY_RETRY_AFTER) -> None:
        super().__init__(f"login throttle: no lock on {address!r} after {LOCK_TRIES} tries")
        self.address = address
        self.retry_after = retry_after


@dataclass(frozen=True)
class ThrottleConfig:
    address_limit: int = 10   # failed logins per client address within the window, then refused
    account_free: int = 3     # failed logins per account answered without delay
    delay_base: float = 0.5   # seconds, the first delay; doubles with each further failure
    delay_max: float = 4.0    # seconds, the longest delay
    window: float = 900.0     # seconds a failure is remembered
    max_rows: int = 100_000   # rows of web_login_failure per portal; beyond, the oldest go first

    @property
    def account_keep(self) -> int:
        """Failures kept per account: enough for the delay to reach its cap, and one more so that
        "exactly n" can be told from "n or more"."""
        steps = (math.ceil(math.log2(max(1.0, self.delay_max / self.delay_base)))
                 if self.delay_base > 0 else 0)
        return self.account_free + steps + 2


@dataclass(frozen=True)
class Attempt:
    address: str       # the address key (see ``address_key``)
    account: str       # the account key (lower case)
    retry_after: int   # > 0: refused, the address is blocked for this many more seconds
    delay: float       # seconds to wait before answering
    recent: int        # failures on the account within the window before this attempt (counted up
                       # to ``account_keep``)
    address_failures: int = 0      # the address's failures within the window, this attempt's included
    rows: tuple[int, ...] = ()     # ids of this attempt's web_login_failure rows (address, account)


def address_key(remote_addr: str) -> str:
    """The client, for blocking: an IPv4 address, or the /64 of an IPv6 one (IPv4-mapped: IPv4)."""
    try:
        ip = ipaddress.ip_address(remote_addr.split("%", 1)[0])
    except ValueError:
        return remote_addr[:MAX_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def account_key(login: str) -> str:
    return login.lower()[:MAX_KEY]


def account_subject(account: str) -> str:
    """The account's ``web_login_failure.subject``: a hash, so the table never holds what a stranger
    typed into the login field; fixed length, so no collation or length limit applies to it."""
    return hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()


def backoff(failures: int, free: int, base: float, cap: float) -> float:
    """Seconds to wait before answering an attempt on an account with ``failures`` recent failures."""
    if failures < free:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - free, 64))


def _when(seconds: float) -> dt.datetime:
    """Clock seconds as the naive UTC DATETIME every table holds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


class LoginThrottle:
    """Per-address blocking and per-account delays for one portal, on med_db's ``web_login_failure``
    rows of that portal (thread-safe; every process of the portal on one database shares them)."""

    def __init__(self, config: ThrottleConfig, session_factory: sessionmaker[Session], portal: str,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.session_factory = session_factory
        self.portal = portal
        self.clock = clock
        self.sleep = sleep
        self.address_limit = max(1, config.address_limit)
        self.account_keep = config.account_keep
        self.max_rows = max(1, config.max_rows)
        self.forgotten = 0  # rows this process deleted to keep the cap, since start
        self.busy = 0  # attempts answered "too many at once" (``ThrottleBusy``), since start
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._since_sweep = 0

    # -- one attempt --------------------------------------------------------------------------------

    def begin(self, remote_addr: str, login: str) -> Attempt:
        """Start a login attempt: refused (``retry_after``) if the address is blocked, else counted
        as a failure of both the address and the account until ``succeeded``."""
        address, account = address_key(remote_addr), account_key(login)
        now = self.clock()
        at = _when(now)
        cutoff = at - dt.timedelta(seconds=self.config.window)
        limit = self.address_limit
        with self.session_factory() as db:
            self._lock_address(db, address, at)  # held until the commit below
            seen = self._recent(db, ADDRESS, address, cutoff, limit)
            if len(seen) >= limit:  # blocked: refused without a write
                db.commit()
                return Attempt(address, account, self._retry_after(seen[limit - 1], at), 0.0, 0, len(seen))
            rows = [WebLoginFailure(portal=self.portal, kind=kind, subject=subject, started=at)
                    for kind, subject in ((ADDRESS, address), (ACCOUNT, account_subject(account)))]
            db.add_all(rows)
            lock = WebLoginLock
            db.execute(update(lock).where(lock.portal == self.portal, lock.subject == address).values(used=at))
            db.commit()
            ids = tuple(r.id for r in rows)
            recent = self._account_rows(db, rows[1].subject, cutoff)
        self._after_write(now)
        cfg = self.config
        return Attempt(address, account, 0, backoff(recent, cfg.account_free, cfg.delay_base, cfg.delay_max),
                       recent, len(seen) + 1, ids)

    def _lock_address(self, db: Session, address: str, at: dt.datetime) -> None:
        """Begin ``db``'s transaction holding the address's ``web_login_lock`` row, which every attempt
        from the address takes before it counts, in any process: its count and its rows' commit are one
        step for the others.  A missing row is made in a transaction of its own (holding nothing else
        meanwhile, so that two makers never wait on each other) and then locked."""
        lock = WebLoginLock
        sqlite = db.get_bind().dialect.name == "sqlite"
        for _ in range(LOCK_TRIES):
            if sqlite:  # SQLite has no row locks: the write lock, taken at once, serialises the attempts
                db.execute(text("BEGIN IMMEDIATE"))
            held = db.execute(select(lock.subject).where(lock.portal == self.portal, lock.subject == address)
                              .with_for_update()).first()
            if held is not None:
                return
            db.rollback()
            db.add(lock(portal=self.portal, subject=address, used=at))
            try:
                db.commit()
            except IntegrityError:  # another attempt made it first: lock that one
                db.rollback()
        db.rollback()
        with self._lock:
            self.busy += 1
        raise ThrottleBusy(address)

    def wait(self, attempt: Attempt) -> None:
        """The account's delay, in this request's thread."""
        if attempt.delay > 0:
            self.sleep(attempt.delay)

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the attempt's address failure is refunded (the address's other
        failures stay: an attacker's own account does not wipe them), the account's failures are
        cleared."""
        with self.session_factory() as db:
            if attempt.rows:
                db.execute(delete(WebLoginFailure).where(WebLoginFailure.id == attempt.rows[0]))
            db.execute(delete(WebLoginFailure).where(
                WebLoginFailure.portal == self.portal, WebLoginFailure.kind == ACCOUNT,
                WebLoginFailure.subject == account_subject(attempt.account)))
            db.commit()
        if attempt.recent:
            more = " or more" if attempt.recent >= self.account_keep else ""  # counted up to the cap
            log.warning("login to %r from %s after %d%s failed attempts on the account (answer delayed %.1f s)",
                        attempt.account, attempt.address, attempt.recent, more, attempt.delay)

    def failed(self, attempt: Attempt) -> None:
        """The password was wrong: the attempt stays counted (it was from its start)."""
        log.info("failed login to %r from %s (answer delayed %.1f s)", attempt.account, attempt.address,
                 attempt.delay)
        if attempt.address_failures >= self.address_limit:
            log.warning("logins from %s refused for up to %g s: %d failed logins", attempt.address,
                        self.config.window, self.address_limit)

    # -- the table ----------------------------------------------------------------------------------

    def _recent(self, db: Session, kind: str, subject: str, cutoff: dt.datetime, n: int) -> list[dt.datetime]:
        """Start times of the newest ``n`` rows of ``subject`` within the window, newest first."""
        f = WebLoginFailure
        return list(db.scalars(select(f.started).where(f.portal == self.portal, f.kind == kind,
                                                       f.subject == subject, f.started > cutoff)
                               .order_by(f.started.desc()).limit(n)))

    def _account_rows(self, db: Session, subject: str, cutoff: dt.datetime) -> int:
        """The account's failures before this attempt (whose row is committed), at most
        ``account_keep``; rows beyond the newest ``account_keep`` are deleted."""
        f = WebLoginFailure
        ids = list(db.scalars(select(f.id).where(f.portal == self.portal, f.kind == ACCOUNT, f.subject == subject,
                                                 f.started > cutoff)
                              .order_by(f.started.desc(), f.id.desc()).limit(self.account_keep + TRIM_SLACK)))
        if len(ids) > self.account_keep:
            db.execute(delete(f).where(f.id.in_(ids[self.account_keep:])))
            db.commit()
        return min(max(0, len(ids) - 1), self.account_keep)

    def _retry_after(self, oldest: dt.datetime, at: dt.datetime) -> int:
        """Seconds until a failure that started at ``oldest`` leaves the window."""
        left = oldest + dt.timedelta(seconds=self.config.window) - at
        return max(1, math.ceil(left.total_seconds()))

    def _after_write(self, now: float) -> None:
        with self._lock:
            self._since_sweep += 1
            due = self._since_sweep >= SWEEP_EVERY or now >= self._next_sweep
        if due:
            try:
                self.sweep()
            except DBAPIError as e:  # e.g. a MySQL/MariaDB deadlock with another process's sweep
                log.warning("login failures: sweep failed, the next one will retry: %s", " ".join(str(e.orig).split()))

    def sweep(self) -> int:
        """Delete the rows that left the window, then the oldest beyond ``max_rows``; the number of
        this portal's rows left."""
        now = self.clock()
        with self._lock:
            self._since_sweep = 0
            self._next_sweep = now + SWEEP_INTERVAL
        f = WebLoginFailure
        cutoff = _when(now) - dt.timedelta(seconds=self.config.window)
        with self.session_factory() as db:
            db.execute(delete(f).where(f.portal == self.portal, f.started <= cutoff))
            db.commit()
            self._sweep_locks(db, cutoff)
            rows = db.scalar(select(func.count()).select_from(f).where(f.portal == self.portal)) or 0
            excess = rows - self.max_rows
            if excess <= 0:
                return rows
            oldest = list(db.scalars(select(f.id).where(f.portal == self.portal)
                                     .order_by(f.started, f.id).limit(excess)))
            for chunk in _chunks(oldest, DELETE_CHUNK):
                db.execute(delete(f).where(f.id.in_(chunk)))
            db.commit()
        with self._lock:
            self.forgotten += len(oldest)
        log.warning("login failures: %d rows, over the cap of %d: forgot the oldest %d early",
                    rows, self.max_rows, len(oldest))
        return rows - len(oldest)

    def _sweep_locks(self, db: Session, cutoff: dt.datetime) -> None:
        """Delete the lock rows whose address counted no attempt within the window, then the oldest
        beyond ``max_rows``.  Deleting one is safe at any time: a DELETE waits for its holder, and an
        attempt that finds none makes it again (``_lock_address``)."""
        lock = WebLoginLock
        db.execute(delete(lock).where(lock.portal == self.portal, lock.used <= cutoff))
        db.commit()
        excess = (db.scalar(select(func.count()).select_from(lock).where(lock.portal == self.portal)) or 0) \
            - self.max_rows
        if excess > 0:
            oldest = list(db.scalars(select(lock.subject).where(lock.portal == self.portal)
                                     .order_by(lock.used, lock.subject).limit(excess)))
            for chunk in _chunks(oldest, DELETE_CHUNK):
                db.execute(delete(lock).where(lock.portal == self.portal, lock.subject.in_(chunk)))
            db.commit()

    def stats(self) -> dict[str, int]:
        """Addresses and accounts with failures within the window (all processes of the portal), the
        rows this process deleted to keep the cap, and its attempts answered "too many at once"."""
        f = WebLoginFailure
        cutoff = _when(self.clock()) - dt.timedelta(seconds=self.config.window)
        with self.session_factory() as db:
            found = db.execute(select(f.kind, func.count(f.subject.distinct()))
                               .where(f.portal == self.portal, f.started > cutoff).group_by(f.kind)).all()
        counts: dict[str, int] = {row[0]: row[1] for row in found}
        with self._lock:
            forgotten, busy = self.forgotten, self.busy
        return {"addresses_failing": counts.get(ADDRESS, 0), "accounts_failing": counts.get(ACCOUNT, 0),
                "failures_forgotten": forgotten, "logins_busy": busy}


_T = TypeVar("_T")


def _chunks(ids: Sequence[_T], n: int) -> list[Sequence[_T]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]
