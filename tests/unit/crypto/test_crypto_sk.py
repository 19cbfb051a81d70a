"""SK payload protection (RFC 7296 3.14, RFC 5282, RFC 7634): vectors, layout, tampering."""

from __future__ import annotations

import hmac
import itertools

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core_ike.constants import EncrId, IntegId
from core_ike.crypto import sk
from core_ike.errors import DecodeError, IntegrityError, LocalError
from core_ike.rng import SeededRng

RNG = SeededRng("crypto")


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# (encr, key_bits, integ) -> (SK_e length with salt, SK_a length): RFC 7296 2.14, RFC 5282 7.1
KEY_LENGTHS = [
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, 16, 20),
    (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_256_128, 24, 32),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, 32, 48),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, 32, 64),
    (EncrId.AES_GCM_16, 128, None, 20, 0),
    (EncrId.AES_GCM_16, 256, IntegId.NONE, 36, 0),
    (EncrId.AES_GCM_8, 192, None, 28, 0),
    (EncrId.AES_CCM_12, 128, None, 19, 0),
    (EncrId.CHACHA20_POLY1305, None, None, 36, 0),
]


@pytest.mark.parametrize("encr,bits,integ,e_len,a_len", KEY_LENGTHS)
def test_key_lengths(encr: int, bits: int | None, integ: int | None, e_len: int, a_len: int) -> None:
    assert sk.key_lengths(encr, bits, integ) == (e_len, a_len)


@pytest.mark.parametrize(
    "encr,bits,integ",
    [(EncrId.AES_CBC, 128, None), (EncrId.AES_CBC, 100, IntegId.HMAC_SHA1_96),
     (EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA1_96), (EncrId.DES3, None, IntegId.HMAC_SHA1_96),
     (EncrId.AES_CBC, 128, IntegId.HMAC_MD5_96), (EncrId.CHACHA20_POLY1305, 128, None)],
)
def test_key_lengths_rejects(encr: int, bits: int | None, integ: int | None) -> None:
    with pytest.raises(LocalError):
        sk.key_lengths(encr, bits, integ)


# McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4 (AES-128, 60-octet P, AAD):
GCM_K = h("feffe9928665731c6d6a8f9467308308")
GCM_P = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
          "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
GCM_A = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_IV = h("cafebabefacedbaddecaf888")
GCM_C = h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
          "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091")
GCM_T = h("5bc94fbc3221a5db94fae95ae7121a47")


@pytest.mark.parametrize("encr,tag_len", [(EncrId.AES_GCM_16, 16), (EncrId.AES_GCM_12, 12),
                                          (EncrId.AES_GCM_8, 8)])
def test_gcm_vector_open(encr: int, tag_len: int) -> None:
    # RFC 5282 4: nonce = salt(4) | IV(8); the 4-octet salt is the tail of SK_e. AAD = prefix.
    p = sk.make_protector(encr, 128, None, GCM_K + GCM_IV[:4], b"", rng=RNG)
    body = GCM_IV[4:] + GCM_C + GCM_T[:tag_len]
    # P's last octet (0x39 = 57) is read as the Pad Length: 60 - 58 = 2 octets of payload remain
    assert p.open(GCM_A, body) == GCM_P[:2]
    with pytest.raises(IntegrityError):
        p.open(GCM_A[:-1] + b"\x00", body)


# RFC 3602 4 case #2: AES-128-CBC, 32-octet plaintext
CBC_K = h("c286696d887c9aa0611bbb3e2025a45a")
CBC_IV = h("562e17996d093d28ddb3ba695a2e6f58")
CBC_P = bytes(range(32))
CBC_C = h("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1")


def test_cbc_vector_open() -> None:
    sk_a = bytes(range(32))
    p = sk.make_protector(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, CBC_K, sk_a, rng=RNG)
    prefix = b"H" * 32
    icv = hmac.digest(sk_a, prefix + CBC_IV + CBC_C, "sha256")[:16]  # RFC 4868 2.3 truncation
    # 0x1f = 31 as Pad Length: the whole block pair is padding -> empty inner payloads
    assert p.open(prefix, CBC_IV + CBC_C + icv) == b""
    with pytest.raises(IntegrityError):
        p.open(prefix, CBC_IV + CBC_C + bytes(16))


CBC_SUITES = list(itertools.product(
    [128, 192, 256],
    [IntegId.HMAC_SHA1_96, IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256],
))


@pytest.mark.parametrize("bits,integ", CBC_SUITES)
@pytest.mark.parametrize("n", [0, 1, 14, 15, 16, 17, 100])
def test_cbc_layout_independently_checked(bits: int, integ: int, n: int) -> None:
    e_len, a_len = sk.key_lengths(EncrId.AES_CBC, bits, integ)
    sk_e, sk_a = bytes(range(1, e_len + 1)), bytes(range(2, a_len + 2))
    p = sk.make_protector(EncrId.AES_CBC, bits, integ, sk_e, sk_a, rng=RNG)
    prefix, pt = b"\x01" * 32, bytes(range(n))
    body = p.seal(prefix, pt)
    assert len(body) == p.sealed_length(n)
    icv_len = sk.integ_icv_length(integ)
    iv, ct, icv = body[:16], body[16:-icv_len], body[-icv_len:]
    assert len(ct) % 16 == 0 and len(ct) >= n + 1
    digest = {12: "sha1", 16: "sha256", 24: "sha384", 32: "sha512"}[icv_len]
    assert icv == hmac.digest(sk_a, prefix + iv + ct, digest)[:icv_len]  # RFC 7296 3.14
    dec = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).decryptor()
    clear = dec.update(ct) + dec.finalize()
    assert clear[:n] == pt and clear[-1] == len(clear) - n - 1  # padding | PadLength
    assert p.open(prefix, body) == pt


@pytest.mark.parametrize("encr", [EncrId.AES_GCM_16, EncrId.AES_GCM_12, EncrId.AES_GCM_8])
@pytest.mark.parametrize("bits", [128, 192, 256])
def test_gcm_layout_independently_checked(encr: int, bits: int) -> None:
    e_len, _ = sk.key_lengths(encr, bits, None)
    sk_e = bytes(range(e_len))
    p = sk.make_protector(encr, bits, None, sk_e, rng=RNG)
    prefix, pt = b"\x02" * 32, b"inner payloads"
    body = p.seal(prefix, pt)
    tags: dict[int, int] = {EncrId.AES_GCM_16: 16, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_8: 8}
    tag_len = tags[encr]
    assert len(body) == p.sealed_length(len(pt)) == 8 + len(pt) + 1 + tag_len
    iv = body[:8]
    full = AESGCM(sk_e[:-4]).encrypt(sk_e[-4:] + iv, pt + b"\x00", prefix)
    assert body[8:] == full[: len(full) - 16 + tag_len]
    assert p.open(prefix, body) == pt


def test_gcm_explicit_iv_unique() -> None:
    p = sk.make_protector(EncrId.AES_GCM_16, 128, None, bytes(20), rng=RNG)
    ivs = {p.seal(b"x", b"y")[:8] for _ in range(1000)}
    assert len(ivs) == 1000


ALL_SUITES = [(EncrId.AES_CBC, b, i) for b, i in CBC_SUITES] + [
    (e, b, None) for e in (EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16,
                           EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16)
    for b in (128, 192, 256)
] + [(EncrId.CHACHA20_POLY1305, None, None)]


@pytest.mark.parametrize("encr,bits,integ", ALL_SUITES)
def test_tampering_detected(encr: int, bits: int | None, integ: int | None) -> None:
    e_len, a_len = sk.key_lengths(encr, bits, integ)
    p = sk.make_protector(encr, bits, integ, bytes(e_len), b"\x07" * a_len, rng=RNG)
    prefix = b"\x03" * 32
    body = p.seal(prefix, b"payload octets")
    for pos in (0, len(body) // 2, len(body) - 1):
        bad = bytearray(body)
        bad[pos] ^= 0x80
        with pytest.raises(IntegrityError):
            p.open(prefix, bytes(bad))
    with pytest.raises(IntegrityError):
        p.open(b"\x04" + prefix[1:], body)  # the prefix is authenticated too
    with pytest.raises(DecodeError):
        p.open(prefix, body[:5])
    other = sk.make_protector(encr, bits, integ, b"\x01" * e_len, b"\x08" * a_len, rng=RNG)
    with pytest.raises(IntegrityError):
        other.open(prefix, body)


@pytest.mark.parametrize("encr,bits,integ", ALL_SUITES)
def test_plaintext_capacity(encr: int, bits: int | None, integ: int | None) -> None:
    e_len, a_len = sk.key_lengths(encr, bits, integ)
    p = sk.make_protector(encr, bits, integ, bytes(e_len), bytes(a_len), rng=RNG)
    for room in range(60, 140):
        cap = p.plaintext_capacity(room)
        assert p.sealed_length(cap) <= room < p.sealed_length(cap + 1)


def test_bad_padding_after_valid_icv() -> None:
    sk_a = bytes(20)
    p = sk.make_protector(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, bytes(16), sk_a, rng=RNG)
    iv = bytes(16)
    enc = Cipher(algorithms.AES(bytes(16)), modes.CBC(iv)).encryptor()
    ct = enc.update(b"\x00" * 15 + b"\x20") + enc.finalize()  # Pad Length 32 > 15 octets
    icv = hmac.digest(sk_a, b"P" + iv + ct, "sha1")[:12]
    with pytest.raises(DecodeError) as ei:
        p.open(b"P", iv + ct + icv)
    assert not isinstance(ei.value, IntegrityError)


def test_make_protector_checks_key_lengths() -> None:
    with pytest.raises(LocalError):
        sk.make_protector(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, bytes(16), bytes(19), rng=RNG)
    with pytest.raises(LocalError):
        sk.make_protector(EncrId.AES_GCM_16, 128, None, bytes(16), rng=RNG)  # salt missing
