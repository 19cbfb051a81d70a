"""SK / SKF payload protection (RFC 7296 3.14, RFC 5282, RFC 7634, RFC 7383).

One protector per direction, built from SK_e (+ SK_a) and implementing the codec's `SkProtector`:

    sealed_length(n) -> len(IV | ciphertext(payloads | padding | PadLength) | ICV)
    seal(prefix, plaintext) -> IV | ciphertext | ICV
    open(prefix, body) -> plaintext (IntegrityError if the ICV / tag does not verify)

`prefix` is the IKE header + SK (or SKF) generic header (+ fragment fields for SKF), with final
lengths. Non-AEAD: ICV = INTEG(SK_a, prefix | IV | ciphertext) truncated (RFC 7296 3.14).
AEAD: AAD = prefix, nonce = salt | 8-octet explicit IV (RFC 5282 4, RFC 7634 2).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ..constants import EncrId, IntegId
from ..errors import DecodeError, IntegrityError, LocalError
from ..rng import Rng

__all__ = [
    "AEAD_ENCR",
    "SUPPORTED_ENCR",
    "SUPPORTED_INTEG",
    "AeadProtector",
    "CbcHmacProtector",
    "integ_icv_length",
    "key_lengths",
    "make_protector",
]

# RFC 7296 3.3.2 / RFC 4868 2: INTEG transforms -> (hash, key length, truncated ICV length)
_INTEG: dict[int, tuple[str, int, int]] = {
    IntegId.HMAC_SHA1_96: ("sha1", 20, 12),
    IntegId.HMAC_SHA2_256_128: ("sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 64, 32),
}

# AEAD ciphers: id -> (salt length, ICV length). RFC 5282 4: GCM salt 4, CCM salt 3;
# RFC 7634 2: ChaCha20-Poly1305 salt 4, key 256 bits.
_AEAD: dict[int, tuple[int, int]] = {
    EncrId.AES_GCM_8: (4, 8),
    EncrId.AES_GCM_12: (4, 12),
    EncrId.AES_GCM_16: (4, 16),
    EncrId.AES_CCM_8: (3, 8),
    EncrId.AES_CCM_12: (3, 12),
    EncrId.AES_CCM_16: (3, 16),
    EncrId.CHACHA20_POLY1305: (4, 16),
}

# AEAD ciphers: id -> the cipher object for a key (without the salt)
_AEAD_NEW: dict[int, Callable[[bytes], Any]] = {
    EncrId.AES_GCM_8: AESGCM,
    EncrId.AES_GCM_12: AESGCM,
    EncrId.AES_GCM_16: AESGCM,
    EncrId.AES_CCM_8: partial(AESCCM, tag_length=8),
    EncrId.AES_CCM_12: partial(AESCCM, tag_length=12),
    EncrId.AES_CCM_16: partial(AESCCM, tag_length=16),
    EncrId.CHACHA20_POLY1305: ChaCha20Poly1305,
}

AEAD_ENCR: frozenset[int] = frozenset(_AEAD)
_SHORT_GCM = frozenset((EncrId.AES_GCM_8, EncrId.AES_GCM_12))
SUPPORTED_ENCR: frozenset[int] = frozenset([EncrId.AES_CBC, *_AEAD])
SUPPORTED_INTEG: frozenset[int] = frozenset(_INTEG)
_AES_KEY_BITS = (128, 192, 256)
_AEAD_IV_LEN = 8  # RFC 5282 3.1 / RFC 7634 2: explicit IV in the SK payload


def _cipher_key_bits(encr_id: int, key_bits: int | None) -> int:
    if encr_id == EncrId.CHACHA20_POLY1305:
        if key_bits not in (None, 256):
            raise LocalError(f"ChaCha20-Poly1305 has a 256-bit key, not {key_bits}")
        return 256
    if encr_id not in SUPPORTED_ENCR:
        raise LocalError(f"unsupported encryption algorithm {encr_id}")
    if key_bits not in _AES_KEY_BITS:
        raise LocalError(f"unsupported AES key length {key_bits}")
    assert key_bits is not None
    return key_bits


def integ_icv_length(integ_id: int) -> int:
    """Truncated ICV length of an INTEG transform (RFC 4868 2.3)."""
    try:
        return _INTEG[integ_id][2]
    except KeyError:
        raise LocalError(f"unsupported integrity algorithm {integ_id}") from None


def key_lengths(encr_id: int, key_bits: int | None, integ_id: int | None) -> tuple[int, int]:
    """(SK_e length incl. AEAD salt, SK_a length) in octets (RFC 7296 2.14, RFC 5282 7.1)."""
    bits = _cipher_key_bits(encr_id, key_bits)
    if encr_id in _AEAD:
        if integ_id not in (None, IntegId.NONE):  # RFC 5282 8: no INTEG with an AEAD cipher
            raise LocalError("an AEAD cipher takes no integrity algorithm")
        return bits // 8 + _AEAD[encr_id][0], 0
    if integ_id is None or integ_id not in _INTEG:
        raise LocalError(f"unsupported integrity algorithm {integ_id}")
    return bits // 8, _INTEG[integ_id][1]


def _strip_padding(data: bytes) -> bytes:
    # RFC 7296 3.14: the last octet is the Pad Length; the padding precedes it.
    if not data:
        raise DecodeError("SK payload: empty plaintext")
    pad = data[-1]
    if pad + 1 > len(data):
        raise DecodeError(f"SK payload: pad length {pad} exceeds plaintext")
    return data[: len(data) - pad - 1]


class CbcHmacProtector:
    """AES-CBC + HMAC-SHA* (RFC 3602 IV rules as used by RFC 7296 3.14)."""

    __slots__ = ("_alg", "_digest", "_rng", "_sk_a", "block_size", "icv_size", "iv_size")

    def __init__(self, sk_e: bytes, integ_id: int, sk_a: bytes, rng: Rng) -> None:
        digest, key_len, self.icv_size = _INTEG[integ_id]
        if len(sk_a) != key_len:
            raise LocalError(f"integrity key is {len(sk_a)} octets, expected {key_len}")
        self._alg = algorithms.AES(sk_e)
        # one-shot HMAC per message: a keyed hmac object holds ~0.8 KiB of OpenSSL state per direction
        self._sk_a, self._digest = sk_a, digest
        self._rng = rng
        self.block_size = self.iv_size = 16

    def sealed_length(self, plaintext_len: int) -> int:
        body = plaintext_len + 1
        return self.iv_size + body + (-body) % 16 + self.icv_size

    def plaintext_capacity(self, sealed_len: int) -> int:
        """Largest plaintext length whose sealed length is <= sealed_len (RFC 7383 2.5)."""
        room = (sealed_len - self.iv_size - self.icv_size) // 16 * 16
        return max(room - 1, -1)

    def _icv(self, prefix: bytes, iv: bytes, ct: bytes) -> bytes:
        return hmac.digest(self._sk_a, b"".join((prefix, iv, ct)), self._digest)[: self.icv_size]

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        pad = (-(len(plaintext) + 1)) % 16
        iv = self._rng.bytes(16)  # RFC 7296 3.14: random, unpredictable IV per message
        enc = Cipher(self._alg, modes.CBC(iv)).encryptor()
        ct = enc.update(plaintext + bytes(pad) + bytes((pad,))) + enc.finalize()
        return iv + ct + self._icv(prefix, iv, ct)

    def open(self, prefix: bytes, body: bytes) -> bytes:
        ct_len = len(body) - 16 - self.icv_size
        if ct_len < 16 or ct_len % 16:
            raise DecodeError(f"SK payload: bad encrypted length {len(body)}")
        iv, ct, icv = body[:16], body[16 : 16 + ct_len], body[16 + ct_len :]
        if not hmac.compare_digest(self._icv(prefix, iv, ct), icv):
            raise IntegrityError("SK payload: ICV mismatch")
        dec = Cipher(self._alg, modes.CBC(iv)).decryptor()
        return _strip_padding(dec.update(ct) + dec.finalize())


class AeadProtector:
    """AES-GCM / AES-CCM (RFC 5282) and ChaCha20-Poly1305 (RFC 7634) in the SK payload."""

    __slots__ = (
        "_counter",
        "_encr_id",
        "_key",
        "_new",
        "_salt",
        "_truncated_gcm",
        "block_size",
        "icv_size",
        "iv_size",
    )

    def __init__(self, encr_id: int, sk_e: bytes, rng: Rng) -> None:
        salt_len, self.icv_size = _AEAD[encr_id]
        key, self._salt = sk_e[:-salt_len], sk_e[-salt_len:]
        self._key = key
        self._encr_id = encr_id
        # a fresh cipher object per message: each holds ~2.5 KiB of OpenSSL contexts, which per IKE_SA
        # (two directions, mostly idle) cost more memory than the SA itself; creating one takes < 1 us
        self._new = _AEAD_NEW[encr_id]
        # GCM with 8/12-octet ICVs: AESGCM only emits/accepts 16-octet tags (SP 800-38D 5.2.1.2)
        self._truncated_gcm = encr_id in _SHORT_GCM
        # RFC 5282 3.1: the explicit IV must never repeat under one key. A 64-bit counter from a
        # random start gives uniqueness without a random draw per message.
        self._counter = int.from_bytes(rng.bytes(8), "big")
        self.block_size = 1
        self.iv_size = _AEAD_IV_LEN

    def sealed_length(self, plaintext_len: int) -> int:
        return self.iv_size + plaintext_len + 1 + self.icv_size

    def plaintext_capacity(self, sealed_len: int) -> int:
        return sealed_len - self.iv_size - self.icv_size - 1

    def _next_iv(self) -> bytes:
        c = self._counter
        self._counter = (c + 1) & 0xFFFFFFFFFFFFFFFF
        return c.to_bytes(8, "big")

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        iv = self._next_iv()
        # RFC 5282 3: the Pad Length octet is present; no padding is needed (block size 1).
        out: bytes = self._new(self._key).encrypt(self._salt + iv, plaintext + b"\x00", prefix)
        if self._truncated_gcm:
            out = out[: len(out) - 16 + self.icv_size]  # GCM short tags are prefixes (SP 800-38D 5.2.1.2)
        return iv + out

    def open(self, prefix: bytes, body: bytes) -> bytes:
        if len(body) < self.iv_size + 1 + self.icv_size:
            raise DecodeError(f"SK payload: bad encrypted length {len(body)}")
        nonce = self._salt + body[: self.iv_size]
        try:
            if self._truncated_gcm:
                data = self._open_short_gcm(nonce, prefix, body[self.iv_size :])
            else:
                data = self._new(self._key).decrypt(nonce, body[self.iv_size :], prefix)
        except InvalidTag:
            raise IntegrityError("SK payload: AEAD tag mismatch") from None
        return _strip_padding(data)

    def _open_short_gcm(self, nonce: bytes, aad: bytes, ct_tag: bytes) -> bytes:
        ct, tag = ct_tag[: -self.icv_size], ct_tag[-self.icv_size :]
        mode = modes.GCM(nonce, tag, min_tag_length=self.icv_size)
        dec = Cipher(algorithms.AES(self._key), mode).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(ct) + dec.finalize()


def make_protector(
    encr_id: int, key_bits: int | None, integ_id: int | None, sk_e: bytes, sk_a: bytes = b"", *, rng: Rng,
) -> CbcHmacProtector | AeadProtector:
    """The SkProtector for one direction (SK_ei/SK_ai or SK_er/SK_ar; RFC 7296 2.14); `rng` draws the
    CBC IVs (RFC 7296 3.14) and the start of the AEAD IV counter (RFC 5282 3.1)."""
    e_len, a_len = key_lengths(encr_id, key_bits, integ_id)
    if len(sk_e) != e_len or len(sk_a) != a_len:
        raise LocalError(f"key lengths {len(sk_e)}/{len(sk_a)}, expected {e_len}/{a_len}")
    if encr_id in _AEAD:
        return AeadProtector(encr_id, sk_e, rng)
    assert integ_id is not None
    return CbcHmacProtector(sk_e, integ_id, sk_a, rng)
