"""Fixtures for the codec tests: a trivial SK protector implementing codec.message.SkProtector."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest

from core_ike.errors import IntegrityError


class XorProtector:
    """Not crypto: XOR 'cipher' with 8-octet block padding, 8-octet IV, 16-octet HMAC tag.

    The tag covers prefix | IV | ciphertext, like the AEAD AAD / HMAC input of RFC 7296 3.14.
    """

    IV, TAG, BLOCK = 8, 16, 8

    def __init__(self, key: bytes = b"k") -> None:
        self.key = key
        self.counter = 0
        self.opened = 0

    def _padded_len(self, n: int) -> int:
        return -(-(n + 1) // self.BLOCK) * self.BLOCK  # payloads | padding | Pad Length

    def sealed_length(self, plaintext_len: int) -> int:
        return self.IV + self._padded_len(plaintext_len) + self.TAG

    def _xor(self, data: bytes) -> bytes:
        k = self.key * (len(data) // len(self.key) + 1)
        return bytes(a ^ b for a, b in zip(data, k, strict=False))

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        self.counter += 1
        iv = self.counter.to_bytes(self.IV, "big")
        pad = self._padded_len(len(plaintext)) - len(plaintext) - 1
        ct = self._xor(plaintext + bytes(pad) + bytes([pad]))
        tag = hmac.new(self.key, prefix + iv + ct, hashlib.sha256).digest()[: self.TAG]
        return iv + ct + tag

    def open(self, prefix: bytes, body: bytes) -> bytes:
        if len(body) < self.IV + self.BLOCK + self.TAG or (len(body) - self.IV - self.TAG) % self.BLOCK:
            raise IntegrityError(f"SK body of {len(body)} octets")
        iv, ct, tag = body[: self.IV], body[self.IV : -self.TAG], body[-self.TAG :]
        want = hmac.new(self.key, prefix + iv + ct, hashlib.sha256).digest()[: self.TAG]
        if not hmac.compare_digest(tag, want):
            raise IntegrityError("ICV mismatch")
        self.opened += 1
        pt = self._xor(ct)
        pad = pt[-1]
        if pad + 1 > len(pt):
            raise IntegrityError("bad pad length")
        return pt[: len(pt) - pad - 1]


@pytest.fixture
def protector() -> XorProtector:
    return XorProtector()


@pytest.fixture
def make_protector() -> Callable[[bytes], XorProtector]:
    return XorProtector
