"""Key identifiers: the reference known answer and the per-key-type rule."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from med_db.keyid import (
    KeyError_,
    format_keyid,
    keyid_of,
    keyid_of_spki,
    parse_keyid,
    parse_peer_public_key,
    pem_from_spki,
)

REFERENCE_KEYID = "ed90e64feca21f4b6897992422e0de21b9d62629"
REFERENCE_SPKI_SHA1 = "65c7bb4351a284794e4bf3bf60f4df70dc822b21"


def test_reference_known_answer(reference_pem: str) -> None:
    spki, keyid = parse_peer_public_key(reference_pem)
    assert len(spki) == 294
    assert keyid.hex() == REFERENCE_KEYID
    assert hashlib.sha1(spki).hexdigest() == REFERENCE_SPKI_SHA1  # the wrong choice, for contrast
    assert keyid != hashlib.sha1(spki).digest()
    assert format_keyid(keyid) == "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29"
    assert parse_keyid(format_keyid(keyid)) == keyid
    assert parse_keyid("#" + REFERENCE_KEYID) == keyid
    assert keyid_of_spki(spki) == keyid
    assert pem_from_spki(spki).split() == reference_pem.split()


@pytest.mark.parametrize("curve,point_len", [(ec.SECP256R1(), 65), (ec.SECP384R1(), 97)])
def test_ec_keyid_is_sha1_of_point(curve: ec.EllipticCurve, point_len: int) -> None:
    key = ec.generate_private_key(curve).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der[-point_len] == 0x04  # uncompressed point at the end of the BIT STRING
    assert keyid_of(key) == hashlib.sha1(der[-point_len:]).digest()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_peer_public_key(pem.decode())[1] == keyid_of(key)


def test_ed25519_keyid_is_sha1_of_raw_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert keyid_of(key) == hashlib.sha1(der[-32:]).digest()


def _pem(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "Public key is missing."),
        ("   \n", "Public key is missing."),
        ("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n", "Parsing public key failed."),
        ("hello", "Parsing public key failed."),
    ],
)
def test_bad_pem_messages(text: str, message: str) -> None:
    with pytest.raises(KeyError_, match=message):
        parse_peer_public_key(text)


def test_short_rsa_and_other_types_rejected() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(KeyError_, match="1024 bits, at least 2048"):
        parse_peer_public_key(_pem(short))
    with pytest.raises(KeyError_, match="Unsupported key type"):
        parse_peer_public_key(_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(KeyError_, match="Unsupported key type"):
        parse_peer_public_key(_pem(dsa.generate_private_key(key_size=2048).public_key()))
