"""Login throttling that a stranger cannot turn against an account's owner.

Two limits, both over a sliding ``window``:

- per client address: after ``address_limit`` failed logins the address is refused ("try again in N
  seconds") until the oldest of those failures leaves the window;
- per account: no refusal ever, only a delay before the answer: none for the first ``account_free``
  failures, then ``delay_base`` doubling with each failure, at most ``delay_max`` seconds.  The owner,
  logging in from an address that is not blocked, gets in (a few seconds late at worst).

An attempt counts as a failure from the moment it starts and is refunded when the password was right,
so attempts sent in parallel see each other: they cannot all slip under the address limit, and the
account delay grows with them.  The delay is a sleep in the request's own thread (flup serves each
request in a thread of its own) and is capped by ``delay_max``; it happens before the password is
checked or the database is read, so it holds no connection and its length says nothing about the
password.

The client address is the FastCGI ``REMOTE_ADDR``: the TCP peer of lighttpd or Apache.  No forwarding
header is trusted here; behind another reverse proxy, the web server must restore the client address
(``deploy/README-medmgr.md``).  An IPv6 client is its /64, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("medmgr_web.throttle")

MAX_KEY = 128  # characters of an account name or address kept as a key


@dataclass(frozen=True)
class ThrottleConfig:
    address_limit: int = 10   # failed logins per client address within the window, then refused
    account_free: int = 3     # failed logins per account answered without delay
    delay_base: float = 0.5   # seconds, the first delay; doubles with each further failure
    delay_max: float = 4.0    # seconds, the longest delay
    window: float = 900.0     # seconds a failure is remembered
    max_keys: int = 10_000    # addresses (and accounts) remembered; the least recently failing go first


@dataclass(frozen=True)
class Attempt:
    address: str       # the address key (see ``address_key``)
    account: str       # the account key (lower case)
    retry_after: int   # > 0: refused, the address is blocked for this many more seconds
    delay: float       # seconds to wait before answering
    recent: int        # failures on the account within the window before this attempt (counted up
                       # to where the delay stops growing)


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


def backoff(failures: int, free: int, base: float, cap: float) -> float:
    """Seconds to wait before answering an attempt on an account with ``failures`` recent failures."""
    if failures < free:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - free, 64))


class FailureLog:
    """Times of recent failures per key within ``window``: at most ``keep`` per key, at most
    ``max_keys`` keys (the key failing least recently is forgotten first).  Stale keys are swept at
    every addition, oldest first, so the work is amortized O(1).  Not thread-safe by itself."""

    def __init__(self, window: float, keep: int, max_keys: int) -> None:
        self.window = window
        self.keep = max(1, keep)
        self.max_keys = max(1, max_keys)
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failed first

    def __len__(self) -> int:
        return len(self._keys)

    def recent(self, key: str, now: float) -> deque[float] | None:
        q = self._keys.get(key)
        if q is None:
            return None
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._keys[key]
            return None
        return q

    def add(self, key: str, now: float) -> int:
        """Record a failure; the number of recent failures of ``key`` (at most ``keep``)."""
        q = self.recent(key, now)
        if q is None:
            q = self._keys[key] = deque(maxlen=self.keep)
        else:
            self._keys.move_to_end(key)
        q.append(now)
        self._sweep(now)
        return len(q)

    def refund(self, key: str, now: float) -> None:
        """Take back the latest failure of ``key`` (its attempt succeeded)."""
        q = self.recent(key, now)
        if q is not None:
            q.pop()
            if not q:
                del self._keys[key]

    def reset(self, key: str) -> None:
        self._keys.pop(key, None)

    def _sweep(self, now: float) -> None:
        keys = self._keys
        while len(keys) > self.max_keys:
            keys.popitem(last=False)
        while keys:
            q = next(iter(keys.values()))
            if q and now - q[-1] < self.window:
                break
            keys.popitem(last=False)


class LoginThrottle:
    """Per-address blocking and per-account delays for one portal (thread-safe)."""

    def __init__(self, config: ThrottleConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self._addresses = FailureLog(config.window, config.address_limit, config.max_keys)
        # failures counted per account: enough for the delay to reach its cap, and one more so that the
        # log can tell "exactly n" from "n or more"
        steps = math.ceil(math.log2(max(1.0, config.delay_max / config.delay_base))) if config.delay_base > 0 else 0
        self._accounts = FailureLog(config.window, config.account_free + steps + 2, config.max_keys)
        self._lock = threading.Lock()

    def begin(self, remote_addr: str, login: str) -> Attempt:
        """Start a login attempt: refused (``retry_after``) if the address is blocked, else counted
        as a failure of both the address and the account until ``succeeded``."""
        cfg = self.config
        address, account = address_key(remote_addr), account_key(login)
        with self._lock:
            now = self.clock()
            q = self._addresses.recent(address, now)
            if q is not None and len(q) >= cfg.address_limit:
                return Attempt(address, account, max(1, math.ceil(q[0] + cfg.window - now)), 0.0, 0)
            acc = self._accounts.recent(account, now)
            recent = 0 if acc is None else len(acc)
            self._addresses.add(address, now)
            self._accounts.add(account, now)
        return Attempt(address, account, 0, backoff(recent, cfg.account_free, cfg.delay_base, cfg.delay_max),
                       recent)

    def wait(self, attempt: Attempt) -> None:
        """The account's delay, in this request's thread."""
        if attempt.delay > 0:
            self.sleep(attempt.delay)

    def succeeded(self, attempt: Attempt) -> None:
        with self._lock:
            self._addresses.refund(attempt.address, self.clock())
            self._accounts.reset(attempt.account)
        if attempt.recent:
            more = " or more" if attempt.recent >= self._accounts.keep else ""  # counted up to the cap
            log.warning("login to %r from %s after %d%s failed attempts on the account (answer delayed %.1f s)",
                        attempt.account, attempt.address, attempt.recent, more, attempt.delay)

    def failed(self, attempt: Attempt) -> None:
        cfg = self.config
        with self._lock:
            q = self._addresses.recent(attempt.address, self.clock())
            blocked = q is not None and len(q) >= cfg.address_limit
        log.info("failed login to %r from %s (answer delayed %.1f s)", attempt.account, attempt.address,
                 attempt.delay)
        if blocked:
            log.warning("logins from %s refused for up to %g s: %d failed logins", attempt.address,
                        cfg.window, cfg.address_limit)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"addresses_failing": len(self._addresses), "accounts_failing": len(self._accounts)}
