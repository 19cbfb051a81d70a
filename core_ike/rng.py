"""The one random source of the sans-IO core (design principle 1: randomness is an input).

SPIs, nonces, cookie secrets, IVs, DH exponents and connect IDs all come from an `Rng` handed in by
the adapter: `core_ike.io.sysrng.SystemRng` (the OS CSPRNG) in the daemons, `SeededRng` in tests,
which makes a run reproducible. RFC 7296 2.10 and 3.14 ask for unpredictable nonces and IVs; only
an OS source gives that, so `SeededRng` is for tests only.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class Rng(Protocol):
    def bytes(self, n: int) -> bytes:
        """`n` random octets."""
        ...


def randbits(rng: Rng, bits: int) -> int:
    """An integer of at most `bits` random bits."""
    n = (bits + 7) // 8
    return int.from_bytes(rng.bytes(n), "big") >> (n * 8 - bits)


class SeededRng:
    """Deterministic octets (SHA-256 of seed | counter): the same seed gives the same run. Tests only."""

    def __init__(self, seed: bytes | str | int = 0) -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(8, "big", signed=True)
        self._seed = seed.encode() if isinstance(seed, str) else seed
        self._counter = 0
        self._pool = b""

    def bytes(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out
