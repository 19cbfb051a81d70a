"""AUTH (RFC 7296 2.15, RFC 4754, RFC 7427, RFC 8420) and key identifiers."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from core_ike.constants import AuthMethod, HashAlgorithm, PrfId
from core_ike.crypto import auth
from core_ike.crypto.prf import Prf
from core_ike.crypto.sigalg import SigAlg, algorithm_identifier, parse_algorithm_identifier
from core_ike.errors import LocalError


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# the RSA-2048 key of strongSwan's medsrv test data (test.sql); its key ID is the known answer below
SAMPLE_PEM = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzZRsIp99UrIdoctThOfc
r2Up92BTSlY1Xv1J6Hqcbx3dX/MDvX60nCPeA63Eh0VvQetfkpR73I/42+RD+NES
4NosmBRefE0c0Vzd0IV39NTz0KLh2jwIyUzYGXWHUZMeepckzEPXOhG44XaiaLTN
u/OZXLCXI6vJv8R3wl5xSkZhqEwHi+dATYmGvlXyBDfjprJ4o8yJrsCFlB8aGq+v
SyKuFG/kaE1VZ9wwZYoyCH0BuYUVBwyxZTMRy2EC+CqDxjjCp5mF27lgB1Lpy8Jy
AUpcVHtKtZEww6lIZYv/eUtvICz5WTn/pzsQUh8FwGDOyxX4WX7ZXXK55AXuMfG1
2QIDAQAB
-----END PUBLIC KEY-----
"""


def test_keyid_known_answer() -> None:
    key = auth.load_public_key(SAMPLE_PEM)
    assert auth.keyid_sha1(key).hex() == "ed90e64feca21f4b6897992422e0de21b9d62629"
    assert auth.spki_sha1(key).hex() == "65c7bb4351a284794e4bf3bf60f4df70dc822b21"


def test_load_public_key_formats() -> None:
    key = auth.load_public_key(SAMPLE_PEM)
    assert isinstance(key, rsa.RSAPublicKey)
    der_spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    der_pkcs1 = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    pem_pkcs1 = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    for blob in (der_spki, der_pkcs1, pem_pkcs1):
        assert auth.keyid_sha1(auth.load_public_key(blob)).hex().startswith("ed90e64f")
    with pytest.raises(LocalError):
        auth.load_public_key(b"garbage")


def test_keyid_ec_and_ed25519() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = ec_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    import hashlib

    assert auth.keyid_sha1(ec_key) == hashlib.sha1(point).digest()
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    assert auth.keyid_sha1(ed) == hashlib.sha1(ed.public_bytes_raw()).digest()


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
@pytest.mark.parametrize("enc", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_load_private_key(fmt: serialization.PrivateFormat, enc: serialization.Encoding) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    blob = key.private_bytes(enc, fmt, serialization.NoEncryption())
    loaded = auth.load_private_key(blob)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(LocalError):
        auth.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_signed_octets_and_psk() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    msg, nonce, sk_p, idb = b"M" * 300, b"N" * 32, b"K" * 32, b"\x02\x00\x00\x00alice"
    octets = auth.signed_octets(msg, nonce, prf, sk_p, idb)
    # RFC 7296 2.15: RealMessage | NonceData | prf(SK_p, RestOfIDPayload)
    assert octets == msg + nonce + hmac.digest(sk_p, idb, "sha256")
    psk = b"secret"
    expected = hmac.digest(hmac.digest(psk, b"Key Pad for IKEv2", "sha256"), octets, "sha256")
    assert auth.psk_auth(prf, psk, octets) == expected
    assert auth.verify_psk_auth(prf, psk, octets, expected)
    assert not auth.verify_psk_auth(prf, b"secreT", octets, expected)
    assert len(auth.KEY_PAD) == 17


def test_rfc4754_ecdsa_p256_vector() -> None:
    # RFC 4754 8.1: P-256 / SHA-256, message "abc", AUTH method 9 = r || s
    w = int("DC51D3866A15BACDE33D96F992FCA99DA7E6EF0934E7097559C27F1614C88A7F", 16)
    pub = ec.derive_private_key(w, ec.SECP256R1()).public_key()
    r = h("CB28E099 9B9C7715 FD0A80D8 E47A7707 9716CBBF 917DD72E 97566EA1 C066957C")
    s = h("86FA3BB4 E26CAD5B F90B7F81 899256CE 7594BB1E A0C89212 748BFF3B 3D5B0315")
    assert auth.verify_signature_auth(pub, AuthMethod.ECDSA_256, r + s, b"abc")
    assert not auth.verify_signature_auth(pub, AuthMethod.ECDSA_256, r + s, b"abd")
    assert not auth.verify_signature_auth(pub, AuthMethod.ECDSA_384, r + s, b"abc")
    assert not auth.verify_signature_auth(pub, AuthMethod.DIGITAL_SIGNATURE, r + s, b"abc")


# RFC 7427 Appendix A: length octet and DER
ALGIDS = [
    (SigAlg("rsa", "sha256"), "0f", "300d06092a864886f70d01010b0500"),
    (SigAlg("rsa", "sha384"), "0f", "300d06092a864886f70d01010c0500"),
    (SigAlg("rsa", "sha512"), "0f", "300d06092a864886f70d01010d0500"),
    (SigAlg("ecdsa", "sha256"), "0c", "300a06082a8648ce3d040302"),
    (SigAlg("ecdsa", "sha384"), "0c", "300a06082a8648ce3d040303"),
    (SigAlg("ecdsa", "sha512"), "0c", "300a06082a8648ce3d040304"),
    (SigAlg("ed25519", None), "07", "300506032b6570"),
    (SigAlg("ed448", None), "07", "300506032b6571"),
    # RFC 4055 3.1 RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 (hash params NULL, trailer omitted)
    (SigAlg("rsa-pss", "sha256", 32, "sha256"), "43",
     "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108"
     "300d06096086480165030402010500a203020120"),
]


@pytest.mark.parametrize("alg,length,der", ALGIDS, ids=[f"{a.kind}-{a.hash}" for a, _, _ in ALGIDS])
def test_algorithm_identifiers(alg: SigAlg, length: str, der: str) -> None:
    enc = algorithm_identifier(alg)
    assert enc == h(der) and len(enc) == int(length, 16)
    assert parse_algorithm_identifier(enc) == alg


def test_parse_pss_variants() -> None:
    # hash params absent + explicit trailerField 1 (both allowed by RFC 4055)
    hash_absent = "300b0609608648016503040202"
    der = ("3042" "06092a864886f70d01010a" "3035" "a00d" + hash_absent
           + "a11a301806092a864886f70d010108" + hash_absent + "a203020130" + "a303020101")
    assert parse_algorithm_identifier(h(der)) == SigAlg("rsa-pss", "sha384", 48, "sha384")
    # empty parameters: RFC 4055 defaults SHA-1 / MGF1-SHA-1 / salt 20
    assert parse_algorithm_identifier(h("300f06092a864886f70d01010a3002" "3000")) is None  # not a SEQ body
    assert parse_algorithm_identifier(h("300d06092a864886f70d01010a3000")) == SigAlg("rsa-pss", "sha1", 20, "sha1")


@pytest.mark.parametrize("bad", ["", "30", "3005060300", "300a06082a8648ce3d0403020500",
                                 "300506032b6571ff", "300506032b6599", "310506032b6570",
                                 "300d06092a864886f70d01010a3003a20100"])
def test_parse_algorithm_identifier_rejects(bad: str) -> None:
    assert parse_algorithm_identifier(h(bad)) is None


RSA_KEY = rsa.generate_private_key(65537, 2048)
KEYS: dict[str, auth.PrivateKey] = {
    "rsa": RSA_KEY,
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "p521": ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
    "ed448": ed448.Ed448PrivateKey.generate(),
}
ALL_HASHES = {HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY}

# (key, requested method, peer hashes, rsa_pss) -> (method used, algorithm in AUTH data or None)
SIGN_CASES = [
    ("rsa", AuthMethod.RSA_SIG, set(), False, AuthMethod.RSA_SIG, None),
    ("rsa", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("rsa", "sha256")),
    ("rsa", AuthMethod.DIGITAL_SIGNATURE, {HashAlgorithm.SHA2_384}, False, 14, SigAlg("rsa", "sha384")),
    ("rsa", AuthMethod.DIGITAL_SIGNATURE, {HashAlgorithm.SHA2_512}, False, 14, SigAlg("rsa", "sha512")),
    ("rsa", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, True, 14, SigAlg("rsa-pss", "sha256", 32, "sha256")),
    ("rsa", AuthMethod.DIGITAL_SIGNATURE, set(), False, AuthMethod.RSA_SIG, None),  # RFC 7427 fallback
    ("p256", AuthMethod.ECDSA_256, set(), False, AuthMethod.ECDSA_256, None),
    ("p384", AuthMethod.ECDSA_384, set(), False, AuthMethod.ECDSA_384, None),
    ("p521", AuthMethod.ECDSA_521, set(), False, AuthMethod.ECDSA_521, None),
    ("p256", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("ecdsa", "sha256")),
    ("p384", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("ecdsa", "sha384")),
    ("p521", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("ecdsa", "sha512")),
    ("p384", AuthMethod.DIGITAL_SIGNATURE, set(), False, AuthMethod.ECDSA_384, None),
    ("ed25519", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("ed25519", None)),
    ("ed448", AuthMethod.DIGITAL_SIGNATURE, ALL_HASHES, False, 14, SigAlg("ed448", None)),
]


@pytest.mark.parametrize("name,method,peer,pss,want_method,want_alg", SIGN_CASES)
def test_signature_round_trip(name: str, method: int, peer: set[int], pss: bool, want_method: int,
                              want_alg: SigAlg | None) -> None:
    key = KEYS[name]
    octets = b"signed octets " * 40
    used, data = auth.create_signature_auth(key, method, octets, peer, rsa_pss=pss)
    assert used == want_method
    if want_alg is not None:
        assert parse_algorithm_identifier(data[1 : 1 + data[0]]) == want_alg
    pub = key.public_key()
    assert auth.verify_signature_auth(pub, used, data, octets)
    assert not auth.verify_signature_auth(pub, used, data, octets + b"x")
    bad = bytearray(data)
    bad[-1] ^= 1
    assert not auth.verify_signature_auth(pub, used, bytes(bad), octets)
    other = "p256" if name != "p256" else "p384"
    assert not auth.verify_signature_auth(KEYS[other].public_key(), used, data, octets)


def test_legacy_formats() -> None:
    octets = b"abc"
    _, data = auth.create_signature_auth(KEYS["p521"], AuthMethod.ECDSA_521, octets, set())
    assert len(data) == 132  # RFC 4754 7: r || s, 66 octets each
    _, data = auth.create_signature_auth(RSA_KEY, AuthMethod.RSA_SIG, octets, set())
    RSA_KEY.public_key().verify(data, octets, padding.PKCS1v15(), hashes.SHA1())  # RFC 7296 3.8


def test_rfc7427_ecdsa_signature_is_der() -> None:
    key = KEYS["p256"]
    _, data = auth.create_signature_auth(key, 14, b"abc", ALL_HASHES)
    sig = data[1 + data[0] :]
    assert sig[0] == 0x30  # Ecdsa-Sig-Value SEQUENCE (RFC 7427 3)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    key.public_key().verify(sig, b"abc", ec.ECDSA(hashes.SHA256()))


def test_sign_rejects_mismatched_method() -> None:
    with pytest.raises(LocalError):
        auth.create_signature_auth(KEYS["p256"], AuthMethod.ECDSA_384, b"x", set())
    with pytest.raises(LocalError):
        auth.create_signature_auth(KEYS["p256"], AuthMethod.RSA_SIG, b"x", set())
    with pytest.raises(LocalError):
        auth.create_signature_auth(RSA_KEY, AuthMethod.PSK, b"x", set())


def test_verify_malformed_method14() -> None:
    pub = KEYS["ed25519"].public_key()
    for data in (b"", b"\x07", b"\x20" + bytes(10), b"\x07" + h("300506032b6599") + bytes(64)):
        assert not auth.verify_signature_auth(pub, 14, data, b"x")
