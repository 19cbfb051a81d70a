"""Password hashing, login sessions and CSRF tokens for the portals (throttling: ``throttle.py``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# scrypt cost: n = 2**15, r = 8, p = 1 (~32 MiB, tens of milliseconds); stored with every hash.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 256 * 1024 * 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (salt and hash in unpadded base64)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    b64 = [base64.b64encode(x).decode("ascii").rstrip("=") for x in (salt, digest)]
    return f"scrypt${n}${r}${p}${b64[0]}${b64[1]}"


def _b64d(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password, _b64d(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _b64d(digest))


# A hash to verify against when the account does not exist, so timing does not reveal logins.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(slots=True)
class LoginSession:
    sid: str
    csrf: str
    user_id: int
    last_seen: float
    flash: list[str] = field(default_factory=list)


class SessionStore:
    """Login sessions in memory (one process; flup serves with threads), created at login only.

    At most ``max_sessions``: a new login evicts the session idle the longest.  Sessions idle for
    more than ``idle_timeout`` are swept at every lookup, oldest first (the store is kept in order of
    last use, so the sweep is amortized O(1)).  IDs and CSRF tokens from ``secrets``."""

    def __init__(self, idle_timeout: float, max_sessions: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout = idle_timeout
        self.max_sessions = max(1, max_sessions)
        self.clock = clock
        self.evicted = 0  # sessions dropped to make room, since start
        self._sessions: OrderedDict[str, LoginSession] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def sweep(self) -> int:
        """Drop the expired sessions now; the number left."""
        with self._lock:
            self._sweep(self.clock())
            return len(self._sessions)

    def get(self, sid: str | None) -> LoginSession | None:
        if not sid:
            return None
        with self._lock:
            now = self.clock()
            self._sweep(now)
            sess = self._sessions.get(sid)
            if sess is None:
                return None
            sess.last_seen = now
            self._sessions.move_to_end(sid)
            return sess

    def new(self, user_id: int) -> LoginSession:
        with self._lock:
            now = self.clock()
            self._sweep(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
                self.evicted += 1
            sess = LoginSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user_id, now)
            self._sessions[sess.sid] = sess
        return sess

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def drop_user(self, user_id: int) -> None:
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.user_id == user_id]:
                del self._sessions[sid]

    def _sweep(self, now: float) -> None:
        sessions = self._sessions
        while sessions and now - next(iter(sessions.values())).last_seen > self.idle_timeout:
            sessions.popitem(last=False)


# -- CSRF ---------------------------------------------------------------------------------------
# A logged-in form carries its session's random token.  An anonymous form (login, registration)
# has no server-side session: its token is an HMAC, under a per-process secret, of a random value
# the browser holds in a cookie of its own (HttpOnly, SameSite=Strict), and a POST must bring back
# both (a signed double-submit cookie).  Anonymous requests thus cost the server no memory.

CSRF_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def new_csrf_nonce() -> str:
    return secrets.token_urlsafe(32)


def anon_csrf_token(key: bytes, nonce: str) -> str:
    mac = hmac.new(key, b"medmgr anonymous form\0" + nonce.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def csrf_ok(expected: str, got: str | None) -> bool:
    return got is not None and hmac.compare_digest(expected.encode(), got.encode("utf-8", "replace"))


def anon_csrf_ok(key: bytes, nonce: str | None, got: str | None) -> bool:
    return nonce is not None and CSRF_NONCE_RE.fullmatch(nonce) is not None and \
        csrf_ok(anon_csrf_token(key, nonce), got)
