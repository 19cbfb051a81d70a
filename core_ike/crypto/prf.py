"""Pseudo-random functions and prf+ (RFC 7296 2.13).

HMAC PRFs (RFC 2104 with SHA-1, RFC 4868 with SHA-2) use the stdlib one-shot HMAC (`hmac.digest`, or
the OpenSSL function behind it), which runs in OpenSSL without building HMAC objects. AES-CMAC-PRF-128 (RFC 4615) uses `cryptography`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from ..constants import PrfId
from ..errors import LocalError

_hmac_digest: Callable[[bytes, bytes, str], bytes]
try:  # the C function `hmac.digest` calls for a digest name: one Python frame less per HMAC
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # a Python built without OpenSSL's hashlib
    _hmac_digest = hmac.digest

__all__ = ["SUPPORTED_PRFS", "Prf", "prf_for", "prf_plus"]

# RFC 7296 3.3.2 / RFC 4868 2.1: HMAC PRFs, preferred key size = output size.
_HMAC_PRFS: dict[int, tuple[str, int]] = {
    PrfId.HMAC_SHA1: ("sha1", 20),
    PrfId.HMAC_SHA2_256: ("sha256", 32),
    PrfId.HMAC_SHA2_384: ("sha384", 48),
    PrfId.HMAC_SHA2_512: ("sha512", 64),
}

SUPPORTED_PRFS: frozenset[int] = frozenset([*_HMAC_PRFS, PrfId.AES128_CMAC])


def _aes_cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _aes_cmac_prf_128(key: bytes, data: bytes) -> bytes:
    # RFC 4615 3: a key that is not 128 bits is first run through AES-CMAC under the zero key.
    if len(key) != 16:
        key = _aes_cmac(bytes(16), key)
    return _aes_cmac(key, data)


class Prf:
    """A negotiated PRF: `prf(key, data) -> bytes` (RFC 7296 2.13)."""

    __slots__ = ("_digest", "_fn", "key_size", "name", "output_size", "prf_id")

    def __init__(self, prf_id: int) -> None:
        self.prf_id = prf_id
        if prf_id in _HMAC_PRFS:
            self._digest, self.output_size = _HMAC_PRFS[prf_id]
            self.name = f"HMAC-{self._digest.upper()}"
            self._fn: Callable[[bytes, bytes], bytes] | None = None
        elif prf_id == PrfId.AES128_CMAC:
            self._digest, self.output_size, self.name = "", 16, "AES-CMAC-PRF-128"
            self._fn = _aes_cmac_prf_128
        else:
            raise LocalError(f"unsupported PRF {prf_id}")
        self.key_size = self.output_size  # RFC 7296 2.13: preferred key length = output length

    def __call__(self, key: bytes, data: bytes) -> bytes:
        if self._fn is None:
            return _hmac_digest(key, data, self._digest)
        return self._fn(key, data)

    @property
    def fixed_key(self) -> bool:
        """RFC 7296 2.14: AES-based PRFs take only 64 bits of each nonce for SKEYSEED."""
        return self._fn is not None

    def __repr__(self) -> str:
        return f"Prf({self.name})"


_BY_ID: dict[int, Prf] = {}


def prf_for(prf_id: int) -> Prf:
    """The shared `Prf` of `prf_id`: a Prf holds no key or state, so one object per algorithm serves
    every SA (LocalError for an unsupported one, as `Prf()`)."""
    p = _BY_ID.get(prf_id)
    if p is None:
        p = _BY_ID[prf_id] = Prf(prf_id)
    return p


_COUNTERS = [bytes((n,)) for n in range(256)]


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), output T1 | T2 | ...

    The counter is one octet, so at most 255 blocks can be produced.
    """
    blocks = -(-length // prf.output_size)
    if blocks > 255:
        raise LocalError(f"prf+ cannot produce {length} octets with {prf.name}")
    digest = prf._digest
    if prf._fn is None:  # HMAC: the one-shot digest without the Prf call (RFC 2104; one per block)
        t = _hmac_digest(key, seed + b"\x01", digest)
        out = [t]
        for n in range(2, blocks + 1):
            t = _hmac_digest(key, t + seed + _COUNTERS[n], digest)
            out.append(t)
    else:
        t = b""
        out = []
        for n in range(1, blocks + 1):
            t = prf(key, t + seed + _COUNTERS[n])
            out.append(t)
    return b"".join(out)[:length]
