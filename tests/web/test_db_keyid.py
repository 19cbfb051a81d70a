"""Key identifiers: strongSwan's known answer and the per-key-type rule."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from med_db.keyid import (
    KeyError_,
    format_keyid,
    keyid_colon,
    keyid_of,
    keyid_of_spki,
    keyid_text,
    parse_keyid,
    parse_peer_public_key,
    pem_from_spki,
    public_key_from_text,
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
    assert keyid_colon(keyid) == format_keyid(keyid)
    assert keyid_text(keyid) == "keyid:#" + REFERENCE_KEYID
    assert parse_keyid(keyid_text(keyid)) == keyid
    assert parse_keyid("@#" + REFERENCE_KEYID.upper()) == keyid
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


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def key_forms(key: rsa.RSAPrivateKey) -> dict[str, str | bytes]:
    """The same RSA public key in every form people paste or keep in files."""
    pub = key.public_key()
    cert = _self_signed(key)
    enc, fmt = serialization.Encoding, serialization.PublicFormat
    return {
        "spki": pub.public_bytes(enc.PEM, fmt.SubjectPublicKeyInfo).decode(),
        "pkcs1": pub.public_bytes(enc.PEM, fmt.PKCS1).decode(),
        "cert": cert.public_bytes(enc.PEM).decode(),
        "cert with text around": "Certificate:\n    Data: ...\n" + cert.public_bytes(enc.PEM).decode() + "\n",
        "openssh": pub.public_bytes(enc.OpenSSH, fmt.OpenSSH).decode() + " alice@laptop\n",
        "openssh crlf": pub.public_bytes(enc.OpenSSH, fmt.OpenSSH).decode() + " c\r\n",
        "der spki": pub.public_bytes(enc.DER, fmt.SubjectPublicKeyInfo),
        "der cert": cert.public_bytes(enc.DER),
    }


def test_every_form_gives_the_same_key_and_keyid() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    want = keyid_of(key.public_key())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    for form, text in key_forms(key).items():
        assert keyid_of(public_key_from_text(text)) == want, form
        assert parse_peer_public_key(text) == (spki, want), form
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    assert keyid_of(public_key_from_text(private, allow_private=True)) == want


@pytest.mark.parametrize("text,message", [
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB cut", "OpenSSH ssh-rsa key is damaged or incomplete"),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
     "CERTIFICATE block is damaged or incomplete"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
     "CERTIFICATE REQUEST block is not a public key"),
    ("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "This is a private key"),
    ("just some words", "Paste a PEM public key .BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY., "
                        "a PEM X.509 certificate .BEGIN CERTIFICATE. or an OpenSSH public key line"),
])
def test_bad_forms_name_the_accepted_formats(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        public_key_from_text(text)
