"""PRFs and prf+ (RFC 7296 2.13): RFC 2202 / RFC 4231 / RFC 4615 vectors, prf+ structure."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from core_ike.constants import PrfId
from core_ike.crypto.prf import Prf, prf_plus
from core_ike.errors import LocalError


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


KEY_0B = b"\x0b" * 20

# (source, prf, key, data, expected)
PRF_VECTORS = [
    ("RFC 2202 2 case 1", PrfId.HMAC_SHA1, KEY_0B, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    ("RFC 2202 2 case 2", PrfId.HMAC_SHA1, b"Jefe", b"what do ya want for nothing?",
     "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    ("RFC 4231 4.2 SHA-256", PrfId.HMAC_SHA2_256, KEY_0B, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    ("RFC 4231 4.2 SHA-384", PrfId.HMAC_SHA2_384, KEY_0B, b"Hi There",
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
     "faea9ea9076ede7f4af152e8b2fa9cb6"),
    ("RFC 4231 4.2 SHA-512", PrfId.HMAC_SHA2_512, KEY_0B, b"Hi There",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    ("RFC 4231 4.3 SHA-256", PrfId.HMAC_SHA2_256, b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("RFC 4231 4.3 SHA-384", PrfId.HMAC_SHA2_384, b"Jefe", b"what do ya want for nothing?",
     "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
     "8e2240ca5e69e2c78b3239ecfab21649"),
    ("RFC 4231 4.3 SHA-512", PrfId.HMAC_SHA2_512, b"Jefe", b"what do ya want for nothing?",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    # a key longer than the hash's block is hashed first (RFC 2104 2)
    ("RFC 4231 4.7 SHA-256", PrfId.HMAC_SHA2_256, b"\xaa" * 131,
     b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ("RFC 4231 4.7 SHA-512", PrfId.HMAC_SHA2_512, b"\xaa" * 131,
     b"Test Using Larger Than Block-Size Key - Hash Key First",
     "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
     "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"),
    # RFC 4615 4: AES-CMAC-PRF-128 with 18-, 16- and 10-octet keys, 20-octet message
    ("RFC 4615 4 key 18", PrfId.AES128_CMAC, h("000102030405060708090a0b0c0d0e0fedcb"),
     bytes(range(20)), "84a348a4a45d235babfffc0d2b4da09a"),
    ("RFC 4615 4 key 16", PrfId.AES128_CMAC, bytes(range(16)), bytes(range(20)),
     "980ae87b5f4c9c5214f5b6a8455e4c2d"),
    ("RFC 4615 4 key 10", PrfId.AES128_CMAC, bytes(range(10)), bytes(range(20)),
     "290d9e112edb09ee141fcf64c0b72f3d"),
]


@pytest.mark.parametrize("source,prf_id,key,data,expected", PRF_VECTORS, ids=[v[0] for v in PRF_VECTORS])
def test_prf_vectors(source: str, prf_id: int, key: bytes, data: bytes, expected: str) -> None:
    prf = Prf(prf_id)
    out = prf(key, data)
    assert out == h(expected)
    assert len(out) == prf.output_size == prf.key_size


def test_prf_plus_smoke_vector() -> None:
    # strongSwan tests/suites/test_prf_plus.c: 122 octets, HMAC-SHA-256
    out = prf_plus(Prf(PrfId.HMAC_SHA2_256), KEY_0B, b"Hi There", 122)
    assert len(out) == 122
    assert out[:16] == h("b9 bd c0 89 88 b4 c2 b7 5a a9 3e 59 6a c8 42 05")


def _prf_plus_reference(digest: str, key: bytes, seed: bytes, n: int) -> bytes:
    # RFC 7296 2.13, written independently: T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n)
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes([i]), getattr(hashlib, digest)).digest()
        out += t
        i += 1
    return out[:n]


@pytest.mark.parametrize(
    "prf_id,digest",
    [(PrfId.HMAC_SHA1, "sha1"), (PrfId.HMAC_SHA2_256, "sha256"), (PrfId.HMAC_SHA2_384, "sha384"),
     (PrfId.HMAC_SHA2_512, "sha512")],
)
@pytest.mark.parametrize("length", [1, 20, 32, 33, 132, 256, 1000])
def test_prf_plus_matches_formula(prf_id: int, digest: str, length: int) -> None:
    key, seed = b"k" * 37, bytes(range(48))
    assert prf_plus(Prf(prf_id), key, seed, length) == _prf_plus_reference(digest, key, seed, length)


def test_prf_plus_first_block() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    assert prf_plus(prf, b"K", b"S", 32) == hmac.digest(b"K", b"S\x01", "sha256")


def test_prf_plus_limit() -> None:
    prf = Prf(PrfId.HMAC_SHA1)
    assert len(prf_plus(prf, b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(LocalError):
        prf_plus(prf, b"k", b"s", 255 * 20 + 1)  # the counter is one octet


def test_unsupported_prf() -> None:
    with pytest.raises(LocalError):
        Prf(PrfId.HMAC_MD5)


@pytest.mark.parametrize("prf_id", [PrfId.HMAC_SHA1, PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512,
                                    PrfId.AES128_CMAC])
def test_a_keyed_prf_is_the_prf_for_every_key_length(prf_id: int) -> None:
    """RFC 2104 2: keys shorter than the hash block are zero-padded, longer ones hashed first; the keyed
    form (pads absorbed once) gives the same MACs, message after message."""
    prf = Prf(prf_id)
    for n in (0, 1, 16, 20, 63, 64, 65, 127, 128, 129, 300):
        key = bytes((i * 7 + n) & 0xFF for i in range(n))
        keyed = prf.keyed(key)
        for data in (b"", b"x", b"data" * 50):
            got = prf(key, data)
            if prf_id != PrfId.AES128_CMAC:
                assert got == hmac.digest(key, data, prf._digest), (n, len(data))
            assert keyed(data) == got
