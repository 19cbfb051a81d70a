"""The adapters' random source: the OS CSPRNG behind the core's `Rng` protocol (core_ike/rng.py).

It lives outside the sans-IO packages (codec, crypto, ike, me, esp), which the import contract
(.importlinter) holds to taking their randomness as an input; the engine falls back to it when its
adapter passes none."""

from __future__ import annotations

import os


class SystemRng:
    """os.urandom: unpredictable, as RFC 7296 2.10 (nonces) and 3.14 (IVs) require."""

    __slots__ = ()

    def bytes(self, n: int) -> bytes:
        return os.urandom(n)
