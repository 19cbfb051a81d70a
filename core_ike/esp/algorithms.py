"""The ESP transforms the sans-IO ESP SA runs: KEYMAT layout, AEAD ciphers, and the declaration a
data plane makes of what it can install (`EspTransforms`).

AEAD transforms share one layout (RFC 4106 3, 5 and 8.1; RFC 4309 3, 5 and 7.1; RFC 7634 2):
KEYMAT = key | salt, nonce = salt | 8-octet explicit IV, AAD = SPI | Seq (SPI | Seq-high | Seq-low
with ESN), ICV appended to the ciphertext, payload aligned to 4 octets.

| transform | RFC | key bits | salt | ICV |
|---|---|---|---|---|
| AES-GCM-8/12/16 | 4106 | 128, 192, 256 | 4 | 8, 12, 16 |
| AES-CCM-8/12/16 | 4309 | 128, 192, 256 | 3 (11-octet nonce, RFC 4309 4) | 8, 12, 16 |
| ChaCha20-Poly1305 | 7634 | 256 (no key length attribute) | 4 | 16 |

Classic: AES-CBC (RFC 3602) with HMAC-SHA1-96 (RFC 2404) or HMAC-SHA2-256-128/-384-192/-512-256
(RFC 4868). All ciphers come from `cryptography`: AESGCM, AESCCM(tag_length), ChaCha20Poly1305;
GCM with a short ICV seals with AESGCM and keeps the leading octets of the tag (NIST SP 800-38D
5.2.1.2: a truncated tag is the tag's most significant bits) and opens through the GCM mode object,
which verifies a tag of `min_tag_length` octets (AESGCM only takes 16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ..codec.payloads import Transform
from ..constants import EncrId, IntegId, TransformType
from ..errors import LocalError

AES_KEY_BITS = (128, 192, 256)
AEAD_IV = 8  # explicit IV in every packet (RFC 4106 3.1, RFC 4309 3.1, RFC 7634 2)
AEAD_ALIGN = 4  # RFC 4303 2.4: Pad Length and Next Header end a 4-octet word


@dataclass(frozen=True, slots=True)
class AeadSpec:
    salt: int
    icv: int
    key_bits: tuple[int, ...]


AEADS: dict[EncrId, AeadSpec] = {
    EncrId.AES_GCM_8: AeadSpec(4, 8, AES_KEY_BITS),
    EncrId.AES_GCM_12: AeadSpec(4, 12, AES_KEY_BITS),
    EncrId.AES_GCM_16: AeadSpec(4, 16, AES_KEY_BITS),
    EncrId.AES_CCM_8: AeadSpec(3, 8, AES_KEY_BITS),
    EncrId.AES_CCM_12: AeadSpec(3, 12, AES_KEY_BITS),
    EncrId.AES_CCM_16: AeadSpec(3, 16, AES_KEY_BITS),
    EncrId.CHACHA20_POLY1305: AeadSpec(4, 16, (256,)),
}
_CCM = (EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16)

INTEG: dict[IntegId, tuple[type[hashes.HashAlgorithm], int, int]] = {
    # id: (hash, key length, ICV length)
    IntegId.HMAC_SHA1_96: (hashes.SHA1, 20, 12),  # RFC 2404
    IntegId.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),  # RFC 4868 2.1
    IntegId.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    IntegId.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}


def fixed_key_bits(encr_id: int) -> int:
    """The key size of a transform that has no Key Length attribute (ChaCha20-Poly1305: 256,
    RFC 7634 2); 0 for the AES transforms, which always carry one (RFC 7296 3.3.5)."""
    return 256 if encr_id == EncrId.CHACHA20_POLY1305 else 0


def key_lengths(encr_id: EncrId, key_bits: int, integ_id: IntegId = IntegId.NONE) -> tuple[int, int]:
    """(encryption key length incl. salt, integrity key length) in octets, for KEYMAT (RFC 7296 2.17).

    `key_bits` 0 stands for the fixed key size of a transform without Key Length attribute."""
    spec = AEADS.get(encr_id)
    if spec is not None:
        bits = key_bits or fixed_key_bits(encr_id)
        if bits not in spec.key_bits:
            raise LocalError(f"{encr_id.name} does not take a {bits}-bit key")
        if integ_id not in (IntegId.NONE, 0):
            raise LocalError(f"{encr_id.name} is combined mode: no integrity transform (RFC 4303 3.2)")
        return bits // 8 + spec.salt, 0
    if encr_id == EncrId.AES_CBC:
        if key_bits not in AES_KEY_BITS:
            raise LocalError(f"unsupported AES key size {key_bits}")
        if integ_id not in INTEG:
            raise LocalError(f"unsupported ESP integrity algorithm {integ_id}")
        return key_bits // 8, INTEG[integ_id][1]
    raise LocalError(f"unsupported ESP encryption algorithm {encr_id}")


# (nonce, data, aad) -> ciphertext | ICV, and back; open raises InvalidTag
AeadSeal = Callable[[bytes, bytes | bytearray, bytes], bytes]
AeadOpen = Callable[[bytes, bytes | memoryview, bytes | memoryview], bytes]


def aead_ciphers(encr_id: EncrId, key: bytes) -> tuple[AeadSeal, AeadOpen]:
    """Seal and open functions for one key (without the salt); keyed once per SA."""
    seal, open_, _ = aead_keyed(encr_id, key)
    return seal, open_


# (nonce, data, aad, buf) -> octets written into buf: exactly len(data) + ICV when sealing, len(data) - ICV
# when opening (the `cryptography` *_into methods check the buffer's size)
Buffer = bytes | bytearray | memoryview
AeadInto = Callable[[Buffer, Buffer, Buffer, Buffer], int]


def aead_into(encr_id: EncrId, key: bytes) -> tuple[AeadInto, AeadInto] | None:
    """Seal and open functions that write into a caller's buffer (no per-packet allocation), for the
    transforms whose full-length tag `cryptography` checks; None for GCM with a truncated ICV, and
    with a `cryptography` that has no *_into methods."""
    return aead_keyed(encr_id, key)[2]


def aead_keyed(encr_id: EncrId, key: bytes) -> tuple[AeadSeal, AeadOpen, tuple[AeadInto, AeadInto] | None]:
    """`aead_ciphers` and `aead_into` of one key from one keyed cipher object (an SA is installed for
    every CHILD_SA: keying the cipher once, not twice)."""
    spec = AEADS[encr_id]
    aead: AESGCM | AESCCM | ChaCha20Poly1305
    if encr_id == EncrId.CHACHA20_POLY1305:
        aead = ChaCha20Poly1305(key)
    elif encr_id in _CCM:
        aead = AESCCM(key, tag_length=spec.icv)
    else:
        aead = AESGCM(key)
        if spec.icv != 16:
            return (*_short_gcm(aead, algorithms.AES(key), spec.icv), None)
    seal, open_ = getattr(aead, "encrypt_into", None), getattr(aead, "decrypt_into", None)
    return aead.encrypt, aead.decrypt, (seal, open_) if seal is not None and open_ is not None else None


def _short_gcm(gcm: AESGCM, aes: algorithms.AES, icv: int) -> tuple[AeadSeal, AeadOpen]:
    """GCM with an 8- or 12-octet ICV (RFC 4106 6: the tag truncated to its leading octets)."""
    encrypt = gcm.encrypt
    cut = 16 - icv

    def seal(nonce: bytes, data: bytes | bytearray, aad: bytes) -> bytes:
        return encrypt(nonce, data, aad)[:-cut]

    def open_(nonce: bytes, data: bytes | memoryview, aad: bytes | memoryview) -> bytes:
        if len(data) < icv:
            raise InvalidTag
        dec = Cipher(aes, modes.GCM(nonce, bytes(data[-icv:]), min_tag_length=icv)).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(data[:-icv]) + dec.finalize()

    return seal, open_


# -- what a data plane can install ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EspTransforms:
    """The ESP transforms a data plane can install: encryption algorithms as (transform id, key bits;
    0 for a transform without Key Length attribute) and integrity algorithms. The CHILD_SA proposals
    we offer and accept are restricted to these (docs/configuration.md, "Proposals")."""

    dataplane: str  # its name, for messages
    encr: frozenset[tuple[int, int]]
    integ: frozenset[int]

    def accepts(self, t: Transform) -> bool:
        """Can the data plane install transform `t`? Types other than ENCR and INTEG (ESN, a PFS
        group) do not concern it."""
        if t.type == TransformType.ENCR:
            return (t.id, t.key_length or 0) in self.encr
        if t.type == TransformType.INTEG:
            return t.id == IntegId.NONE or t.id in self.integ
        return True

    def supports(self, encr_id: int, key_bits: int, integ_id: int = IntegId.NONE) -> bool:
        key = 0 if fixed_key_bits(encr_id) else key_bits
        return (encr_id, key) in self.encr and (integ_id == IntegId.NONE or integ_id in self.integ)

    def summary(self) -> str:
        """e.g. "AES_CBC_128/192/256, AES_GCM_16_128/192/256; integrity HMAC_SHA1_96, ..." """
        from ..crypto.proposals import transform_name

        bits: dict[str, list[str]] = {}
        for e, b in sorted(self.encr):
            name = transform_name(Transform(TransformType.ENCR, e))
            bits.setdefault(name, []).extend([str(b)] if b else [])
        encr = ", ".join(f"{n}_{'/'.join(b)}" if b else n for n, b in bits.items())
        integ = ", ".join(transform_name(Transform(TransformType.INTEG, i)) for i in sorted(self.integ))
        return f"{encr}; integrity {integ}"


USERSPACE = EspTransforms(
    "userspace",
    frozenset({(int(e), 0 if len(s.key_bits) == 1 else b) for e, s in AEADS.items() for b in s.key_bits}
              | {(int(EncrId.AES_CBC), b) for b in AES_KEY_BITS}),
    frozenset(int(i) for i in INTEG),
)
"""Everything `EspSa` runs (the userspace data plane)."""
