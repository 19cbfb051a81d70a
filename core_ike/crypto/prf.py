"""Pseudo-random functions and prf+ (RFC 7296 2.13).

HMAC PRFs (RFC 2104 with SHA-1, RFC 4868 with SHA-2) are computed from the stdlib's OpenSSL hashes, as
RFC 2104 2 defines HMAC: H(K xor opad, H(K xor ipad, text)). The stdlib keeps the hash methods it looked
up; its one-shot HMAC goes through OpenSSL 3's HMAC(), which looks the MAC and the digest up by name on
every call, a walk through OpenSSL's method store that costs about 4x the MAC itself when it runs from cold
caches, as a responder's first lines after a wake-up do. A key used for many MACs (prf+ blocks, a PSK's
padded key) has its two padded keys absorbed once (`Prf.keyed`) and each MAC copies those states.
AES-CMAC-PRF-128 (RFC 4615) uses `cryptography`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from ..constants import PrfId
from ..errors import LocalError

__all__ = ["SUPPORTED_PRFS", "Prf", "prf_for", "prf_plus"]

# RFC 7296 3.3.2 / RFC 4868 2.1: HMAC PRFs, preferred key size = output size.
_HMAC_PRFS: dict[int, tuple[str, int]] = {
    PrfId.HMAC_SHA1: ("sha1", 20),
    PrfId.HMAC_SHA2_256: ("sha256", 32),
    PrfId.HMAC_SHA2_384: ("sha384", 48),
    PrfId.HMAC_SHA2_512: ("sha512", 64),
}
_HASHES: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512,
}
# an empty hash object per algorithm: `copy()` of it is a fresh one without the stdlib's lookup of the
# method by name (its constructors find the digest in a table of names each time)
_EMPTY: dict[str, Any] = {name: new() for name, new in _HASHES.items()}

_IPAD = {b: int.from_bytes(b"\x36" * b, "big") for b in (64, 128)}  # RFC 2104 2, per block size
_OPAD = {b: int.from_bytes(b"\x5c" * b, "big") for b in (64, 128)}


def _pads(empty: Any, block: int, key: bytes) -> tuple[Any, Any]:
    """RFC 2104 2: hash states that absorbed K xor ipad and K xor opad, K zero-padded to the block
    size (a longer key is hashed first); `empty` is an empty hash object of the algorithm. The XOR is
    done on integers: no table indexed by key octets."""
    if len(key) > block:
        h = empty.copy()
        h.update(key)
        key = h.digest()
    k = int.from_bytes(key, "big") << (8 * (block - len(key)))
    inner = empty.copy()
    inner.update((k ^ _IPAD[block]).to_bytes(block, "big"))
    outer = empty.copy()
    outer.update((k ^ _OPAD[block]).to_bytes(block, "big"))
    return inner, outer


class _KeyedHmac:
    """HMAC (RFC 2104 2) for one key and many messages: the two padded keys are absorbed once, each MAC copies."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, empty: Any, block: int, key: bytes) -> None:
        self._inner, self._outer = _pads(empty, block, key)

    def __call__(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        out: bytes = outer.digest()
        return out


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

    __slots__ = ("_block", "_digest", "_empty", "_fn", "key_size", "name", "output_size", "prf_id")

    def __init__(self, prf_id: int) -> None:
        self.prf_id = prf_id
        if prf_id in _HMAC_PRFS:
            self._digest, self.output_size = _HMAC_PRFS[prf_id]
            self.name = f"HMAC-{self._digest.upper()}"
            self._fn: Callable[[bytes, bytes], bytes] | None = None
            self._empty = _EMPTY[self._digest]
            self._block: int = self._empty.block_size
        elif prf_id == PrfId.AES128_CMAC:
            self._digest, self.output_size, self.name = "", 16, "AES-CMAC-PRF-128"
            self._fn = _aes_cmac_prf_128
        else:
            raise LocalError(f"unsupported PRF {prf_id}")
        self.key_size = self.output_size  # RFC 7296 2.13: preferred key length = output length

    def __call__(self, key: bytes, data: bytes) -> bytes:
        if self._fn is not None:
            return self._fn(key, data)
        inner, outer = _pads(self._empty, self._block, key)  # _hmac, one call less per PRF
        inner.update(data)
        outer.update(inner.digest())
        out: bytes = outer.digest()
        return out

    def keyed(self, key: bytes) -> Callable[[bytes], bytes]:
        """`lambda data: self(key, data)` for a key used many times (its HMAC pads absorbed once)."""
        fn = self._fn
        if fn is not None:
            return lambda data: fn(key, data)
        return _KeyedHmac(self._empty, self._block, key)

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
    if prf._fn is not None:
        mac = prf.keyed(key)
        t = b""
        out = []
        for n in range(1, blocks + 1):
            t = mac(t + seed + _COUNTERS[n])
            out.append(t)
        return b"".join(out)[:length]
    # HMAC: one key for every block, its padded keys absorbed once (RFC 2104 2)
    inner0, outer0 = _pads(prf._empty, prf._block, key)
    t = b""
    out = []
    for n in range(1, blocks + 1):
        inner = inner0.copy()
        inner.update(t + seed + _COUNTERS[n])
        outer = outer0.copy()
        outer.update(inner.digest())
        t = outer.digest()
        out.append(t)
    return b"".join(out)[:length]
