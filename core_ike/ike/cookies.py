"""The responder's COOKIE secrets (RFC 7296 2.6): a cookie is a MAC of (Ni, IPi, SPIi) under a secret that
changes every `lifetime` seconds; the first octet names the secret's version, so a cookie made just
before a change is still accepted (the previous secret stays valid for one period).

The MAC is keyed BLAKE2s (RFC 7693 2.5: a keyed hash is a MAC, no HMAC construction needed) over
exactly what RFC 7296 2.6 binds, Ni | IPi | SPIi: the keyed state is made once per secret and copied
per cookie, so a cookie costs one compression of those octets (docs/operations.md, "Floods").

With a `seed` (several workers behind one address, docs/operations.md "Workers") the secret of each
period of the shared monotonic clock is derived from it, so every worker accepts every other's cookie
and all change secrets at the same moment; without one the secret is drawn from the engine's `Rng`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..rng import Rng
from .prefilter import COOKIE_LEN, packed_ip


def cookie_mac(secret: bytes) -> Any:
    """The keyed MAC state of one secret (hashlib's BLAKE2s object, copied for each cookie)."""
    return hashlib.blake2s(key=secret[:32], digest_size=COOKIE_LEN - 1)


def cookie_value(ni: bytes, ip: bytes, spi_i: bytes, version: int, mac: Any) -> bytes:
    """RFC 7296 2.6: Cookie = <VersionIDofSecret> | MAC_secret(Ni | IPi | SPIi), `mac` from cookie_mac."""
    h = mac.copy()
    h.update(ni)
    h.update(ip)
    h.update(spi_i)
    digest: bytes = h.digest()
    return bytes((version & 0xFF,)) + digest


class CookieSecrets:
    __slots__ = ("lifetime", "mac", "old", "old_mac", "rng", "rotated", "secret", "seed", "version")

    def __init__(self, lifetime: float, seed: bytes | None, rng: Rng) -> None:
        self.lifetime = lifetime
        self.seed = seed
        self.rng = rng
        self.secret = rng.bytes(32)
        self.mac = cookie_mac(self.secret)
        self.version = 0
        self.old: bytes | None = None  # the previous secret, valid for one more period
        self.old_mac: Any = None
        self.rotated = 0.0 if seed is None else float("-inf")  # seeded: derived at first use

    def rotate(self, now: float) -> None:
        """Change the secret (RFC 7296 2.6: regularly); cookies of the previous one stay valid meanwhile."""
        if self.seed is not None:  # periods of the shared clock: every worker has the same secrets at once
            period = int(now // self.lifetime)
            self.version = period
            self.secret = hashlib.sha256(self.seed + period.to_bytes(8, "big", signed=True)).digest()
            self.old = hashlib.sha256(self.seed + (period - 1).to_bytes(8, "big", signed=True)).digest()
            self.mac, self.old_mac = cookie_mac(self.secret), cookie_mac(self.old)
            self.rotated = period * self.lifetime
            return
        self.old, self.old_mac = self.secret, self.mac
        self.version += 1
        self.secret = self.rng.bytes(32)
        self.mac = cookie_mac(self.secret)
        self.rotated = now

    def current(self, now: float) -> tuple[int, Any]:
        """(version, MAC state) of the secret for cookies made at `now` (rotated when due)."""
        if now - self.rotated >= self.lifetime:
            self.rotate(now)
        return self.version, self.mac

    def make(self, ni: bytes, ip: str | bytes, spi_i: bytes, now: float) -> bytes:
        """A cookie for `ip` (a string, or its packed octets)."""
        version, mac = self.current(now)
        return cookie_value(ni, packed_ip(ip) if isinstance(ip, str) else ip, spi_i, version, mac)

    def valid(self, cookie: bytes, ni: bytes, ip: str | bytes, spi_i: bytes, now: float) -> bool:
        if not cookie:
            return False
        if self.seed is not None and now - self.rotated >= self.lifetime:
            self.rotate(now)  # another worker may have started the period already
        # RFC 7296 2.6: the version octet says which secret made the cookie (current or previous one)
        if cookie[0] == self.version & 0xFF:
            mac: Any = self.mac
        elif cookie[0] == (self.version - 1) & 0xFF:
            mac = self.old_mac
        else:
            mac = None
        ipb = packed_ip(ip) if isinstance(ip, str) else ip
        return mac is not None and hmac.compare_digest(cookie, cookie_value(ni, ipb, spi_i, cookie[0], mac))
