"""Key identifiers of public keys, as strongSwan's medsrv portal computes them.

keyid = SHA-1 of the contents of the SubjectPublicKeyInfo BIT STRING (strongSwan KEYID_PUBKEY_SHA1,
RFC 5280 4.2.1.2 method 1): the DER RSAPublicKey for RSA, the X9.62 point for EC (uncompressed),
the raw key for Ed25519/Ed448.  It is the peer's ID_KEY_ID identity (type 11, 20 octets).
"""

from __future__ import annotations

import hashlib
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

MIN_RSA_BITS = 2048


class KeyError_(ValueError):
    """A public key that cannot be used; the message is meant for the user."""


def subject_public_key_bits(key: PublicKeyTypes) -> bytes:
    """The contents of the SPKI BIT STRING (after the unused-bits octet)."""
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise KeyError_(f"Unsupported key type {type(key).__name__}.")


def keyid_of(key: PublicKeyTypes) -> bytes:
    """20-octet key identifier (SHA-1 over subjectPublicKey)."""
    return hashlib.sha1(subject_public_key_bits(key)).digest()


def keyid_of_spki(spki_der: bytes) -> bytes:
    return keyid_of(serialization.load_der_public_key(spki_der))


def format_keyid(keyid: bytes) -> str:
    """Colon-separated lowercase hex, as strongSwan prints an ID_KEY_ID."""
    return ":".join(f"{b:02x}" for b in keyid)


_HEX_RE = re.compile(r"(?:#|0x)?([0-9a-fA-F]{2}(?::?[0-9a-fA-F]{2})*)")


def parse_keyid(text: str) -> bytes:
    """Inverse of :func:`format_keyid`; also accepts plain hex and ``#hex`` (swanctl ``keyid:#...``)."""
    m = _HEX_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a key id: {text!r}")
    return bytes.fromhex(m.group(1).replace(":", ""))


def spki_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_from_spki(der: bytes) -> str:
    """PEM "PUBLIC KEY" text (64-character lines) of a DER SubjectPublicKeyInfo."""
    key = serialization.load_der_public_key(der)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_description(der: bytes) -> str:
    """Short human description of a DER SPKI, e.g. ``RSA 2048`` or ``ECDSA secp256r1``."""
    key = serialization.load_der_public_key(der)
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__.removesuffix("PublicKey")


def parse_peer_public_key(pem: str) -> tuple[bytes, bytes]:
    """Parse a pasted PEM public key; return (SPKI DER, keyid).

    Accepted: RSA with at least 2048 bits and EC keys.  Raises KeyError_ with the message to show.
    Accepts the SPKI ("PUBLIC KEY") and PKCS#1 ("RSA PUBLIC KEY") PEM forms.
    """
    text = pem.strip()
    if not text:
        raise KeyError_("Public key is missing.")
    try:
        key = serialization.load_pem_public_key(text.encode("utf-8", "replace"))
    except (ValueError, TypeError, UnicodeError):
        raise KeyError_("Parsing public key failed.") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyError_(
                f"RSA key too short: {key.key_size} bits, at least {MIN_RSA_BITS} bits are required."
            )
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyError_(
            f"Unsupported key type ({type(key).__name__.removesuffix('PublicKey')}): "
            f"use an RSA key of at least {MIN_RSA_BITS} bits or an EC (ECDSA) key."
        )
    try:
        return spki_der(key), keyid_of(key)
    except ValueError:
        raise KeyError_("Encoding public key failed.") from None
