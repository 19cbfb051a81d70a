"""Key derivation (RFC 7296 2.13, 2.14, 2.17, 2.18) checked against an independent stdlib computation."""

from __future__ import annotations

import hmac

import pytest

from core_ike.constants import DhId, EncrId, IntegId, PrfId
from core_ike.crypto import dh, keys, sk
from core_ike.errors import LocalError
from core_ike.rng import SeededRng

DIGEST: dict[int, str] = {PrfId.HMAC_SHA1: "sha1", PrfId.HMAC_SHA2_256: "sha256", PrfId.HMAC_SHA2_384: "sha384",
          PrfId.HMAC_SHA2_512: "sha512"}
OUT = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

RNG = SeededRng("crypto")


def ref_prf_plus(digest: str, key: bytes, seed: bytes, n: int) -> bytes:
    out, t = b"", b""
    for i in range(1, 256):
        t = hmac.digest(key, t + seed + bytes([i]), digest)
        out += t
        if len(out) >= n:
            break
    return out[:n]


def cut(stream: bytes, lengths: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in lengths:
        out.append(stream[pos : pos + n])
        pos += n
    return out


NI, NR = bytes(range(32)), bytes(range(100, 132))
SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")
SHARED = bytes(i % 251 for i in range(7, 7 + 256))

IKE_SUITES = [
    (PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 128, None),
    (PrfId.HMAC_SHA2_256, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128),
    (PrfId.HMAC_SHA2_384, EncrId.AES_GCM_16, 256, None),
    (PrfId.HMAC_SHA2_512, EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_512_256),
    (PrfId.HMAC_SHA1, EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
]


@pytest.mark.parametrize("prf_id,encr,bits,integ", IKE_SUITES)
def test_ike_keys_formula(prf_id: int, encr: int, bits: int, integ: int | None) -> None:
    d = DIGEST[prf_id]
    got = keys.derive_ike_keys(keys.IkeSuite(prf_id, encr, bits, integ), NI, NR, SHARED, SPI_I, SPI_R)
    # RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir); the nonces are the HMAC key
    seed_key = hmac.digest(NI + NR, SHARED, d)
    e_len, a_len = sk.key_lengths(encr, bits, integ)
    p = OUT[d]
    lengths = [p, a_len, a_len, e_len, e_len, p, p]
    stream = ref_prf_plus(d, seed_key, NI + NR + SPI_I + SPI_R, sum(lengths))
    assert [got.sk_d, got.sk_ai, got.sk_ar, got.sk_ei, got.sk_er, got.sk_pi, got.sk_pr] == cut(stream, lengths)
    assert repr(got) == "IkeKeys(<secret>)"


def test_skeyseed_cmac_uses_64_bits_of_each_nonce() -> None:
    # RFC 7296 2.14: AES-based PRFs take only the first 64 bits of Ni and Nr as the key
    from core_ike.crypto.prf import Prf

    prf = Prf(PrfId.AES128_CMAC)
    assert keys.skeyseed(prf, NI, NR, SHARED) == prf(NI[:8] + NR[:8], SHARED)
    k = keys.derive_ike_keys(keys.IkeSuite(PrfId.AES128_CMAC, EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
                             NI, NR, SHARED, SPI_I, SPI_R)
    assert len(k.sk_d) == len(k.sk_pi) == 16


@pytest.mark.parametrize("old_prf,new_prf", [(PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384),
                                             (PrfId.HMAC_SHA1, PrfId.HMAC_SHA2_256)])
def test_ike_rekey_keys_formula(old_prf: int, new_prf: int) -> None:
    old_sk_d = b"\x55" * 32
    n_i, n_r = b"\x01" * 24, b"\x02" * 40
    suite = keys.IkeSuite(new_prf, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    got = keys.derive_ike_rekey_keys(old_prf, old_sk_d, suite, SHARED, n_i, n_r, SPI_I, SPI_R)
    # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), old PRF; prf+ with the new PRF
    seed_key = hmac.digest(old_sk_d, SHARED + n_i + n_r, DIGEST[old_prf])
    p = OUT[DIGEST[new_prf]]
    lengths = [p, 32, 32, 32, 32, p, p]
    stream = ref_prf_plus(DIGEST[new_prf], seed_key, n_i + n_r + SPI_I + SPI_R, sum(lengths))
    assert [got.sk_d, got.sk_ai, got.sk_ar, got.sk_ei, got.sk_er, got.sk_pi, got.sk_pr] == cut(stream, lengths)


CHILD_SUITES = [
    (EncrId.AES_GCM_16, 128, None, 20, 0),
    (EncrId.AES_GCM_16, 256, None, 36, 0),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, 16, 32),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA1_96, 32, 20),
    (EncrId.CHACHA20_POLY1305, None, None, 36, 0),
]


@pytest.mark.parametrize("encr,bits,integ,e_len,a_len", CHILD_SUITES)
@pytest.mark.parametrize("pfs", [False, True])
def test_child_keys_formula(encr: int, bits: int | None, integ: int | None, e_len: int, a_len: int,
                            pfs: bool) -> None:
    sk_d = b"\x33" * 32
    shared = SHARED if pfs else None
    got = keys.derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, NI, NR, encr, bits, integ, shared)
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); i->r keys first, encr before integ
    seed = (SHARED if pfs else b"") + NI + NR
    km = ref_prf_plus("sha256", sk_d, seed, 2 * (e_len + a_len))
    assert [got.encr_i, got.integ_i, got.encr_r, got.integ_r] == cut(km, [e_len, a_len, e_len, a_len])


def test_ike_protectors_pair_up() -> None:
    ke_i, ke_r = dh.new_key_exchange(DhId.CURVE25519, RNG), dh.new_key_exchange(DhId.CURVE25519, RNG)
    suite = keys.IkeSuite(PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 128, None)
    k_i = keys.derive_ike_keys(suite, NI, NR, ke_i.compute(ke_r.public), SPI_I, SPI_R)
    k_r = keys.derive_ike_keys(suite, NI, NR, ke_r.compute(ke_i.public), SPI_I, SPI_R)
    out_i, in_i = keys.ike_protectors(k_i, suite, initiator=True, rng=RNG)
    out_r, in_r = keys.ike_protectors(k_r, suite, initiator=False, rng=RNG)
    assert in_r.open(b"hdr", out_i.seal(b"hdr", b"to responder")) == b"to responder"
    assert in_i.open(b"hdr", out_r.seal(b"hdr", b"to initiator")) == b"to initiator"


def test_bad_spi_length() -> None:
    with pytest.raises(LocalError):
        keys.derive_ike_keys(keys.IkeSuite(PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 128, None), NI, NR, SHARED,
                             b"", SPI_R)


def test_a_suite_is_a_value_hashed_by_its_transforms() -> None:
    """The per-suite caches (key split, AEAD protectors) key on IkeSuite: equal transforms, equal keys."""
    a = keys.IkeSuite(PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 128, None)
    b = keys.IkeSuite(prf_id=PrfId.HMAC_SHA2_256, encr_id=EncrId.AES_GCM_16, key_bits=128, integ_id=None)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != keys.IkeSuite(PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 256, None)
    assert (a.prf_id, a.encr_id, a.key_bits, a.integ_id) == (PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 128, None)
