"""Key identifiers of public keys, as strongSwan's medsrv portal computes them.

keyid = SHA-1 of the contents of the SubjectPublicKeyInfo BIT STRING (strongSwan KEYID_PUBKEY_SHA1,
RFC 5280 4.2.1.2 method 1): the DER RSAPublicKey for RSA, the X9.62 point for EC (uncompressed),
the raw key for Ed25519/Ed448.  It is the peer's ID_KEY_ID identity (type 11, 20 octets).

Shown as ``keyid:#<hex>`` (:func:`keyid_text`, the identity syntax of swanctl.conf and of our
configs, docs/configuration.md "Identities") and as colon-separated hex (:func:`keyid_colon`, how
strongSwan prints an ID_KEY_ID).  :func:`public_key_from_text` reads a key from any form people
paste: PEM public key (SubjectPublicKeyInfo or PKCS#1), PEM/DER X.509 certificate, OpenSSH line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
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


def keyid_colon(keyid: bytes) -> str:
    """Colon-separated lowercase hex, as strongSwan prints an ID_KEY_ID: ``ed:90:e6:...:29``."""
    return ":".join(f"{b:02x}" for b in keyid)


def keyid_text(keyid: bytes) -> str:
    """The ID_KEY_ID as an identity in swanctl.conf / our TOML configs: ``keyid:#ed90e6...29``."""
    return "keyid:#" + keyid.hex()


format_keyid = keyid_colon  # the older name


_HEX_RE = re.compile(r"(?:keyid:#|@#|#|0x)?([0-9a-fA-F]{2}(?::?[0-9a-fA-F]{2})*)", re.IGNORECASE)


def parse_keyid(text: str) -> bytes:
    """Inverse of :func:`keyid_colon` and :func:`keyid_text`; also plain hex, ``#hex`` and ``@#hex``."""
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


ACCEPTED_FORMATS = (
    "a PEM public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), a PEM X.509 certificate "
    "(BEGIN CERTIFICATE) or an OpenSSH public key line (ssh-rsa AAAA\u2026)"
)
PARSE_FAILED = f"Parsing public key failed. Paste {ACCEPTED_FORMATS}."

_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_SSH_RE = re.compile(r"(?:^|\s)((?:ssh|ecdsa-sha2|sk-ssh|sk-ecdsa)-[A-Za-z0-9@.\-]+)\s+([A-Za-z0-9+/]+=*)")
_SSH2_RE = re.compile(r"---- BEGIN SSH2 PUBLIC KEY ----(.*?)---- END SSH2 PUBLIC KEY ----", re.DOTALL)
_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")
_PRIVATE_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                   "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY")


def _from_pem_block(label: str, block: bytes, allow_private: bool) -> PublicKeyTypes:
    what = "certificate" if label in _CERT_LABELS else "key"
    try:
        if label in _PUBLIC_LABELS:
            return serialization.load_pem_public_key(block)
        if label in _CERT_LABELS:
            return x509.load_pem_x509_certificate(block).public_key()
        if not allow_private:
            raise KeyError_("This is a private key: never give it away. Paste only the public key: "
                            f"{ACCEPTED_FORMATS}.")
        if label == "OPENSSH PRIVATE KEY":
            return cast(PublicKeyTypes, serialization.load_ssh_private_key(block, None).public_key())
        return serialization.load_pem_private_key(block, None).public_key()
    except KeyError_:
        raise
    except TypeError:  # encrypted private key without a password
        raise KeyError_("The private key is encrypted: use its public key instead.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyError_(f"Parsing public key failed: the {label} block is damaged or incomplete (copy the "
                        f"whole {what}, BEGIN and END lines included). Paste {ACCEPTED_FORMATS}.") from None


def _from_ssh(kind: str, b64: str) -> PublicKeyTypes:
    try:
        key = serialization.load_ssh_public_key(f"{kind} {b64}".encode("ascii"))
    except UnsupportedAlgorithm:
        raise KeyError_(f"Unsupported OpenSSH key type {kind}: use ssh-rsa (at least {MIN_RSA_BITS} bits) "
                        "or ecdsa-sha2-nistp256/384/521.") from None
    except ValueError:
        raise KeyError_(f"Parsing public key failed: the OpenSSH {kind} key is damaged or incomplete (copy "
                        f"the whole line). Paste {ACCEPTED_FORMATS}.") from None
    return cast(PublicKeyTypes, key)  # every OpenSSH type cryptography reads has a public key class


def _from_der(der: bytes) -> PublicKeyTypes | None:
    for load in (serialization.load_der_public_key,
                 lambda d: x509.load_der_x509_certificate(d).public_key()):
        try:
            return load(der)
        except (ValueError, UnsupportedAlgorithm):
            continue
    return None


def public_key_from_text(text: str | bytes, *, allow_private: bool = False) -> PublicKeyTypes:
    """A public key from any form people paste or keep in files.

    Accepted: PEM "PUBLIC KEY" (SubjectPublicKeyInfo) and "RSA PUBLIC KEY" (PKCS#1), a PEM X.509
    "CERTIFICATE" (its subject public key is used), an OpenSSH public key line (``ssh-rsa AAAA...
    comment``, also RFC 4716 "SSH2 PUBLIC KEY" blocks), and, as bytes, DER SubjectPublicKeyInfo or a
    DER certificate.  With ``allow_private`` an unencrypted PEM/OpenSSH private key gives its public
    key (for command-line tools; the portal never takes private keys).  Text around a PEM block
    (``openssl x509 -text`` output, comments) is ignored; the first block counts.

    Raises ValueError (:class:`KeyError_`) with a message meant for the user.
    """
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
    if not raw.strip():
        raise KeyError_("Public key is missing.")
    if not isinstance(text, str) and raw[:1] == b"\x30" and (key := _from_der(raw)) is not None:
        return key  # DER (a SEQUENCE), from a file
    body = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    if m := _PEM_RE.search(body):
        label = m.group(1)
        block = m.group(0).encode("ascii", "replace")
        if label in _PUBLIC_LABELS or label in _CERT_LABELS or label in _PRIVATE_LABELS:
            return _from_pem_block(label, block, allow_private)
        raise KeyError_(f"Parsing public key failed: a {label} block is not a public key. "
                        f"Paste {ACCEPTED_FORMATS}.")
    if m := _SSH2_RE.search(body):  # RFC 4716: headers "Name: value" (continued with "\"), then base64
        b64, in_header = "", False
        for line in (ln.strip() for ln in m.group(1).splitlines()):
            if in_header or ":" in line:
                in_header = line.endswith("\\")
            else:
                b64 += line
        try:
            blob = base64.b64decode(b64, validate=True)
            kind = blob[4:4 + int.from_bytes(blob[:4], "big")].decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise KeyError_(PARSE_FAILED) from None
        return _from_ssh(kind, b64)
    if m := _SSH_RE.search(body):
        return _from_ssh(m.group(1), m.group(2))
    raise KeyError_(PARSE_FAILED)


def check_peer_key(key: PublicKeyTypes) -> None:
    """Raise KeyError_ unless the key may identify a peer: RSA of at least 2048 bits, or EC."""
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


def parse_peer_public_key(text: str | bytes) -> tuple[bytes, bytes]:
    """Parse a pasted public key (any form :func:`public_key_from_text` takes); return
    (SPKI DER, keyid).  The stored form is always the SubjectPublicKeyInfo, so a certificate, an
    OpenSSH line and the PEM of the same key give the same row and the same ID_KEY_ID.

    Accepted: RSA with at least 2048 bits and EC keys.  Raises KeyError_ with the message to show.
    """
    key = public_key_from_text(text)
    check_peer_key(key)
    try:
        return spki_der(key), keyid_of(key)
    except ValueError:
        raise KeyError_("Encoding public key failed.") from None
