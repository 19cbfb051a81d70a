"""The responder's COOKIE secrets (RFC 7296 2.6): a cookie is a MAC of (Ni, IPi, SPIi) under a secret that
changes every `lifetime` seconds; the first octet names the secret's version, so a cookie made just
before a change is still accepted (the previous secret stays valid for one period).

With a `seed` (several workers behind one address, docs/operations.md "Workers") the secret of each
period of the shared monotonic clock is derived from it, so every worker accepts every other's cookie
and all change secrets at the same moment; without one the secret is drawn from the engine's `Rng`.
"""

from __future__ import annotations

import hashlib
import hmac

from ..rng import Rng
from .prefilter import cookie_value, packed_ip


class CookieSecrets:
    __slots__ = ("lifetime", "old", "rng", "rotated", "secret", "seed", "version")

    def __init__(self, lifetime: float, seed: bytes | None, rng: Rng) -> None:
        self.lifetime = lifetime
        self.seed = seed
        self.rng = rng
        self.secret = rng.bytes(32)
        self.version = 0
        self.old: bytes | None = None  # the previous secret, valid for one more period
        self.rotated = 0.0 if seed is None else float("-inf")  # seeded: derived at first use

    def rotate(self, now: float) -> None:
        """Change the secret (RFC 7296 2.6: regularly); cookies of the previous one stay valid meanwhile."""
        if self.seed is not None:  # periods of the shared clock: every worker has the same secrets at once
            period = int(now // self.lifetime)
            self.version = period
            self.secret = hashlib.sha256(self.seed + period.to_bytes(8, "big", signed=True)).digest()
            self.old = hashlib.sha256(self.seed + (period - 1).to_bytes(8, "big", signed=True)).digest()
            self.rotated = period * self.lifetime
            return
        self.old = self.secret
        self.version += 1
        self.secret = self.rng.bytes(32)
        self.rotated = now

    def make(self, ni: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        if now - self.rotated >= self.lifetime:
            self.rotate(now)
        return cookie_value(ni, packed_ip(ip), spi_i, self.version, self.secret)

    def valid(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        if not cookie:
            return False
        if self.seed is not None and now - self.rotated >= self.lifetime:
            self.rotate(now)  # another worker may have started the period already
        # RFC 7296 2.6: the version octet says which secret made the cookie (current or previous one)
        if cookie[0] == self.version & 0xFF:
            secret: bytes | None = self.secret
        elif cookie[0] == (self.version - 1) & 0xFF:
            secret = self.old
        else:
            secret = None
        return secret is not None and hmac.compare_digest(cookie, cookie_value(ni, packed_ip(ip), spi_i, cookie[0],
                                                                               secret))
