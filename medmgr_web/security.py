"""Password hashing, login sessions, CSRF tokens and login throttling for the portals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
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


@dataclass
class LoginSession:
    sid: str
    csrf: str
    last_seen: float
    user_id: int | None = None
    flash: list[str] = field(default_factory=list)


class SessionStore:
    """In-memory sessions (one process; flup serves with threads).  IDs from ``secrets``."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._sessions: dict[str, LoginSession] = {}
        self._lock = threading.Lock()

    def get(self, sid: str | None) -> LoginSession | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            sess = self._sessions.get(sid)
            if sess is None:
                return None
            if now - sess.last_seen > self.idle_timeout:
                del self._sessions[sid]
                return None
            sess.last_seen = now
            return sess

    def new(self, user_id: int | None = None) -> LoginSession:
        now = self.clock()
        sess = LoginSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, user_id)
        with self._lock:
            self._expire(now)
            self._sessions[sess.sid] = sess
        return sess

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def drop_user(self, user_id: int) -> None:
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.user_id == user_id]:
                del self._sessions[sid]

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if now - v.last_seen > self.idle_timeout]:
            del self._sessions[sid]


class Throttle:
    """Failed-login limiter: at most ``limit`` failures per key within ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again (0 = allowed now)."""
        now = self.clock()
        with self._lock:
            q = self._fails.get(key)
            if q is None:
                return 0
            while q and now - q[0] >= self.window:
                q.popleft()
            if not q:
                del self._fails[key]
                return 0
            if len(q) < self.limit:
                return 0
            return max(1, int(q[0] + self.window - now + 0.999))

    def fail(self, key: str) -> None:
        with self._lock:
            self._fails.setdefault(key, deque()).append(self.clock())

    def reset(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


def csrf_ok(expected: str, got: str | None) -> bool:
    return got is not None and hmac.compare_digest(expected.encode(), got.encode("utf-8", "replace"))
