"""AUTH signatures made and checked over a hash taken with hashlib (Prehashed) are the signatures over the
octets (RFC 7296 2.15, RFC 7427 3, RFC 4754 7): what `cryptography` signs over the octets verifies here,
what is signed here verifies there, PKCS#1 v1.5 signatures are the same octets, and a changed octet,
signature or hash is refused."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from core_ike.constants import AuthMethod, HashAlgorithm
from core_ike.crypto.auth import create_signature_auth, verify_certificate_signature, verify_signature_auth
from core_ike.crypto.sigalg import SigAlg, algorithm_identifier

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
OCTETS = bytes(range(256)) * 3
HASH = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
HASH_ID = {"sha256": HashAlgorithm.SHA2_256, "sha384": HashAlgorithm.SHA2_384, "sha512": HashAlgorithm.SHA2_512}
DS = int(AuthMethod.DIGITAL_SIGNATURE)


def _head(alg: SigAlg) -> bytes:
    der = algorithm_identifier(alg)
    return bytes((len(der),)) + der


def _flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes((b[at] ^ 0x80,)) + b[at + 1:]


@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
def test_rsa_pkcs1_the_same_signature_as_over_the_octets(h: str) -> None:
    method, data = create_signature_auth(RSA, DS, OCTETS, {HASH_ID[h]})
    assert method == DS
    plain = RSA.sign(OCTETS, padding.PKCS1v15(), HASH[h])  # deterministic (RFC 8017 8.2.1)
    assert data == _head(SigAlg("rsa", h)) + plain
    assert verify_signature_auth(RSA.public_key(), DS, data, OCTETS)
    assert not verify_signature_auth(RSA.public_key(), DS, data, _flip(OCTETS, 100))
    assert not verify_signature_auth(RSA.public_key(), DS, _flip(data, len(data) - 10), OCTETS)
    # the AlgorithmIdentifier names another hash than the one signed: refused
    other = "sha512" if h != "sha512" else "sha256"
    assert not verify_signature_auth(RSA.public_key(), DS, _head(SigAlg("rsa", other)) + plain, OCTETS)


def test_rsa_method_1_sha1() -> None:
    method, data = create_signature_auth(RSA, int(AuthMethod.RSA_SIG), OCTETS, set())
    assert method == AuthMethod.RSA_SIG
    assert data == RSA.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())  # RFC 7296 3.8
    assert verify_signature_auth(RSA.public_key(), method, data, OCTETS)
    assert not verify_signature_auth(RSA.public_key(), method, data, OCTETS + b"\x00")


def test_rsa_pss_both_ways() -> None:
    method, data = create_signature_auth(RSA, DS, OCTETS, {HashAlgorithm.SHA2_256}, rsa_pss=True)
    assert method == DS
    head = _head(SigAlg("rsa-pss", "sha256", 32))
    assert data.startswith(head)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    RSA.public_key().verify(data[len(head):], OCTETS, pss, hashes.SHA256())  # over the octets: no error
    theirs = head + RSA.sign(OCTETS, pss, hashes.SHA256())
    assert verify_signature_auth(RSA.public_key(), DS, theirs, OCTETS)
    assert not verify_signature_auth(RSA.public_key(), DS, theirs, _flip(OCTETS, 5))


@pytest.mark.parametrize(("key", "h"), [(P256, "sha256"), (P384, "sha384")])
def test_ecdsa_both_ways(key: Any, h: str) -> None:
    method, data = create_signature_auth(key, DS, OCTETS, {HASH_ID[h]})
    head = _head(SigAlg("ecdsa", h))
    assert method == DS and data.startswith(head)
    key.public_key().verify(data[len(head):], OCTETS, ec.ECDSA(HASH[h]))
    theirs = head + key.sign(OCTETS, ec.ECDSA(HASH[h]))
    assert verify_signature_auth(key.public_key(), DS, theirs, OCTETS)
    assert not verify_signature_auth(key.public_key(), DS, theirs, _flip(OCTETS, 7))
    # RFC 4754 (methods 9, 10): r || s, each the curve's length
    legacy = {P256: AuthMethod.ECDSA_256, P384: AuthMethod.ECDSA_384}[key]
    m, rs = create_signature_auth(key, int(legacy), OCTETS, set())
    n = len(rs) // 2
    key.public_key().verify(encode_dss_signature(int.from_bytes(rs[:n], "big"), int.from_bytes(rs[n:], "big")),
                            OCTETS, ec.ECDSA(HASH[h]))
    r, s = decode_dss_signature(key.sign(OCTETS, ec.ECDSA(HASH[h])))
    assert verify_signature_auth(key.public_key(), m, r.to_bytes(n, "big") + s.to_bytes(n, "big"), OCTETS)
    assert not verify_signature_auth(key.public_key(), m, r.to_bytes(n, "big") + s.to_bytes(n, "big"), OCTETS[1:])


def test_certificate_signature_over_the_tbs() -> None:
    tbs = OCTETS[:500]
    rsa_sig = RSA.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    ec_sig = P256.sign(tbs, ec.ECDSA(hashes.SHA256()))
    rsa_alg, ec_alg = algorithm_identifier(SigAlg("rsa", "sha256")), algorithm_identifier(SigAlg("ecdsa", "sha256"))
    assert verify_certificate_signature(RSA.public_key(), rsa_alg, tbs, rsa_sig) is True
    assert verify_certificate_signature(RSA.public_key(), rsa_alg, tbs[:-1], rsa_sig) is False
    assert verify_certificate_signature(P256.public_key(), ec_alg, tbs, ec_sig) is True
    assert verify_certificate_signature(P256.public_key(), ec_alg, _flip(tbs, 3), ec_sig) is False
    # an algorithm that does not fit the key, or one left to cryptography: None
    assert verify_certificate_signature(P256.public_key(), rsa_alg, tbs, rsa_sig) is None
    pss_alg = algorithm_identifier(SigAlg("rsa-pss", "sha256", 32))
    assert verify_certificate_signature(RSA.public_key(), pss_alg, tbs, rsa_sig) is None
    assert verify_certificate_signature(RSA.public_key(), b"\x30\x00", tbs, rsa_sig) is None
