"""Sanity sweep: every supported algorithm combination works end to end (no timing, only correctness).

Two simulated endpoints run the crypto of an IKE_SA setup: key exchange, IKE key derivation, SK
protection both ways, PSK / signature AUTH, CHILD_SA keys, and an IKE SA rekey.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from core_ike.constants import AuthMethod, DhId, EncrId, IntegId, PrfId
from core_ike.crypto import auth, dh, keys, sk
from core_ike.crypto.prf import Prf
from core_ike.rng import SeededRng

ENCR_SUITES: list[tuple[int, int | None, int | None]] = [
    *[(EncrId.AES_CBC, b, i) for b in (128, 192, 256)
      for i in (IntegId.HMAC_SHA1_96, IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192,
                IntegId.HMAC_SHA2_512_256)],
    *[(e, b, None) for e in (EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16, EncrId.AES_CCM_8,
                             EncrId.AES_CCM_12, EncrId.AES_CCM_16) for b in (128, 192, 256)],
    (EncrId.CHACHA20_POLY1305, None, None),
]
PRFS = [PrfId.HMAC_SHA1, PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512, PrfId.AES128_CMAC]
GROUPS = sorted(dh.SUPPORTED_GROUPS)

RNG = SeededRng("crypto")


def _ike_setup(prf_id: int, encr: int, bits: int | None, integ: int | None, group: int) -> None:
    ni, nr = os.urandom(32), os.urandom(32)
    spi_i, spi_r = os.urandom(8), os.urandom(8)
    ke_i, ke_r = dh.new_key_exchange(group, RNG), dh.new_key_exchange(group, RNG)
    suite = keys.IkeSuite(prf_id, encr, bits, integ)
    k_i = keys.derive_ike_keys(suite, ni, nr, ke_i.compute(ke_r.public), spi_i, spi_r)
    k_r = keys.derive_ike_keys(suite, ni, nr, ke_r.compute(ke_i.public), spi_i, spi_r)
    assert k_i == k_r
    out_i, in_i = keys.ike_protectors(k_i, suite, initiator=True, rng=RNG)
    out_r, in_r = keys.ike_protectors(k_r, suite, initiator=False, rng=RNG)
    for n in (0, 1, 15, 16, 200):
        pt = os.urandom(n)
        body = out_i.seal(b"hdr", pt)
        assert len(body) == out_i.sealed_length(n)
        assert in_r.open(b"hdr", body) == pt
        assert in_i.open(b"hdr", out_r.seal(b"hdr", pt)) == pt
    prf = Prf(prf_id)
    octets = auth.signed_octets(b"IKE_SA_INIT" * 20, nr, prf, k_i.sk_pi, b"\x02\x00\x00\x00me")
    assert auth.verify_psk_auth(prf, b"psk", octets, auth.psk_auth(prf, b"psk", octets))
    c_i = keys.derive_child_keys(prf_id, k_i.sk_d, ni, nr, encr, bits, integ)
    c_r = keys.derive_child_keys(prf_id, k_r.sk_d, ni, nr, encr, bits, integ)
    assert c_i == c_r and c_i.encr_i != c_i.encr_r
    assert (len(c_i.encr_i), len(c_i.integ_i)) == sk.key_lengths(encr, bits, integ)
    new = keys.derive_ike_rekey_keys(prf_id, k_i.sk_d, suite, os.urandom(32), ni, nr, os.urandom(8),
                                     os.urandom(8))
    assert new.sk_d != k_i.sk_d


def test_every_combination_round_trips() -> None:
    count = 0
    for encr, bits, integ in ENCR_SUITES:
        for prf_id in PRFS:
            _ike_setup(prf_id, encr, bits, integ, DhId.CURVE25519)
            count += 1
    for group in GROUPS:
        _ike_setup(PrfId.HMAC_SHA2_256, EncrId.AES_GCM_16, 256, None, group)
        count += 1
    assert count == len(ENCR_SUITES) * len(PRFS) + len(GROUPS)

    keys_: list[auth.PrivateKey] = [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()),
             ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP521R1()),
             ed25519.Ed25519PrivateKey.generate(), ed448.Ed448PrivateKey.generate()]
    for key in keys_:
        for hashes_ in (set(auth.SUPPORTED_SIGNATURE_HASHES), set()):
            if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) and not hashes_:
                continue
            for pss in (False, True):
                method, data = auth.create_signature_auth(key, AuthMethod.DIGITAL_SIGNATURE, b"o" * 99,
                                                          hashes_, rsa_pss=pss)
                assert auth.verify_signature_auth(key.public_key(), method, data, b"o" * 99)
