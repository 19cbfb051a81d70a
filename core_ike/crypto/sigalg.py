"""RFC 7427 signature AlgorithmIdentifiers: DER encoding and parsing.

Only the identifiers IKEv2 uses (RFC 7427 Appendix A, RFC 8420): sha*WithRSAEncryption,
RSASSA-PSS with explicit parameters (RFC 4055 3.1), ecdsa-with-SHA*, Ed25519, Ed448.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["CertificateParts", "SigAlg", "algorithm_identifier", "certificate_parts", "certificate_subject",
           "parse_algorithm_identifier"]

# DER-encoded OID contents (X.690 8.19)
_OID_RSA = {  # PKCS #1 (RFC 8017 A.2.4)
    "sha1": bytes.fromhex("2a864886f70d010105"),
    "sha256": bytes.fromhex("2a864886f70d01010b"),
    "sha384": bytes.fromhex("2a864886f70d01010c"),
    "sha512": bytes.fromhex("2a864886f70d01010d"),
}
_OID_ECDSA = {  # RFC 5758 3.2
    "sha256": bytes.fromhex("2a8648ce3d040302"),
    "sha384": bytes.fromhex("2a8648ce3d040303"),
    "sha512": bytes.fromhex("2a8648ce3d040304"),
}
_OID_HASH = {  # RFC 5754 2 / RFC 3279 2.2.1
    "sha1": bytes.fromhex("2b0e03021a"),
    "sha256": bytes.fromhex("608648016503040201"),
    "sha384": bytes.fromhex("608648016503040202"),
    "sha512": bytes.fromhex("608648016503040203"),
}
_OID_PSS = bytes.fromhex("2a864886f70d01010a")  # RFC 4055 3.1 id-RSASSA-PSS
_OID_MGF1 = bytes.fromhex("2a864886f70d010108")  # RFC 4055 2.2 id-mgf1
_OID_ED25519 = bytes.fromhex("2b6570")  # RFC 8410 3
_OID_ED448 = bytes.fromhex("2b6571")
_NULL = b"\x05\x00"

_BY_OID: dict[bytes, tuple[str, str | None]] = {
    **{oid: ("rsa", h) for h, oid in _OID_RSA.items()},
    **{oid: ("ecdsa", h) for h, oid in _OID_ECDSA.items()},
    _OID_ED25519: ("ed25519", None),
    _OID_ED448: ("ed448", None),
}
_HASH_BY_OID = {oid: h for h, oid in _OID_HASH.items()}


@dataclass(frozen=True)
class SigAlg:
    """kind: "rsa" | "rsa-pss" | "ecdsa" | "ed25519" | "ed448"; hash: "sha256" ... or None."""

    kind: str
    hash: str | None
    salt_length: int = 0  # RSASSA-PSS only
    mgf_hash: str | None = None  # RSASSA-PSS only; defaults to `hash` when encoding


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(ln))) + ln + value


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _hash_algid(name: str) -> bytes:
    # RFC 4055 2.1 allows absent or NULL parameters; NULL is what most encoders (and RFC 7427 A.4.3) use
    return _seq(_tlv(0x06, _OID_HASH[name]), _NULL)


def algorithm_identifier(alg: SigAlg) -> bytes:
    """DER AlgorithmIdentifier for `alg` (RFC 7427 Appendix A)."""
    if alg.kind == "rsa" and alg.hash in _OID_RSA:
        return _seq(_tlv(0x06, _OID_RSA[alg.hash]), _NULL)
    if alg.kind == "ecdsa" and alg.hash in _OID_ECDSA:
        return _seq(_tlv(0x06, _OID_ECDSA[alg.hash]))  # RFC 5758 3.2: parameters absent
    if alg.kind == "ed25519":
        return _seq(_tlv(0x06, _OID_ED25519))
    if alg.kind == "ed448":
        return _seq(_tlv(0x06, _OID_ED448))
    if alg.kind == "rsa-pss" and alg.hash in _OID_HASH:
        mgf_hash = alg.mgf_hash or alg.hash
        params = _seq(
            _tlv(0xA0, _hash_algid(alg.hash)),  # hashAlgorithm [0]
            _tlv(0xA1, _seq(_tlv(0x06, _OID_MGF1), _hash_algid(mgf_hash))),  # maskGenAlgorithm [1]
            _tlv(0xA2, _tlv(0x02, _der_uint(alg.salt_length))),  # saltLength [2]
            # trailerField [3] DEFAULT 1: omitted (X.690 11.5)
        )
        return _seq(_tlv(0x06, _OID_PSS), params)
    raise ValueError(f"no AlgorithmIdentifier for {alg}")


def _der_uint(v: int) -> bytes:
    return v.to_bytes(v.bit_length() // 8 + 1, "big")


class _DerError(Exception):
    pass


def _read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One TLV at `pos`: (tag, value, next position). Definite lengths only (DER)."""
    if pos + 2 > len(data):
        raise _DerError("truncated")
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or pos + k > len(data):
            raise _DerError("bad length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise _DerError("truncated value")
    return tag, data[pos : pos + n], pos + n


def _header(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at `pos`, within `limit`; definite lengths only (DER)."""
    if pos + 2 > limit:
        raise _DerError("truncated")
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or pos + k > limit:
            raise _DerError("bad length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > limit:
        raise _DerError("truncated value")
    return tag, pos, pos + n


def certificate_subject(der: bytes) -> bytes | None:
    """The subject Name (its whole DER TLV) of a DER X.509 certificate, read from the octets as signed
    (`certificate_parts`); None when it is not that shape."""
    parts = certificate_parts(der)
    return None if parts is None else parts.subject


class CertificateParts(NamedTuple):
    """The octets of a DER X.509 certificate that a signature check reads (RFC 5280 4.1), as signed."""

    tbs: bytes  # tbsCertificate, its whole TLV: what the issuer signed (RFC 5280 4.1.1.3)
    inner_algorithm: bytes  # tbsCertificate.signature, the AlgorithmIdentifier TLV (RFC 5280 4.1.2.3)
    issuer: bytes  # tbsCertificate.issuer, the Name TLV (RFC 5280 4.1.2.4)
    subject: bytes  # tbsCertificate.subject, the Name TLV (RFC 5280 4.1.2.6)
    algorithm: bytes  # signatureAlgorithm, the AlgorithmIdentifier TLV (RFC 5280 4.1.1.2)
    signature: bytes  # signatureValue's octets, without the BIT STRING's unused-bits octet
    unused_bits: int  # that octet: 0 in every signature (RFC 5280 4.1.1.3 encodes whole octets)


def certificate_parts(der: bytes) -> CertificateParts | None:
    """The parts of a DER X.509 certificate a signature check needs, with its subject (RFC 5280 4.1:
    Certificate = SEQUENCE {tbsCertificate, signatureAlgorithm, signatureValue BIT STRING}, tbsCertificate =
    SEQUENCE {[0] version, serialNumber, signature, issuer, validity, subject, ...}), sliced from the octets
    as signed, in one walk over them; None when it is not that shape."""
    try:
        tag, pos, end = _header(der, 0, len(der))
        if tag != 0x30 or end != len(der):
            raise _DerError("Certificate")
        tag, tpos, tend = _header(der, pos, end)  # tbsCertificate
        if tag != 0x30:
            raise _DerError("SEQUENCE expected")
        tbs = der[pos:tend]
        if der[tpos] == 0xA0:  # version, [0] EXPLICIT (absent for v1)
            tpos = _header(der, tpos, tend)[2]
        tpos = _header(der, tpos, tend)[2]  # serialNumber
        tag, _, stop = _header(der, tpos, tend)
        if tag != 0x30:
            raise _DerError("SEQUENCE expected")
        inner, tpos = der[tpos:stop], stop
        tag, _, stop = _header(der, tpos, tend)
        if tag != 0x30:
            raise _DerError("SEQUENCE expected")
        issuer = der[tpos:stop]
        tpos = _header(der, stop, tend)[2]  # validity
        tag, _, stop = _header(der, tpos, tend)
        if tag != 0x30:
            raise _DerError("SEQUENCE expected")
        subject = der[tpos:stop]
        tag, _, stop = _header(der, tend, end)  # signatureAlgorithm
        if tag != 0x30:
            raise _DerError("SEQUENCE expected")
        algorithm = der[tend:stop]
        tag, spos, send = _header(der, stop, end)  # signatureValue
        if tag != 0x03 or send != end or spos == send:
            raise _DerError("signatureValue")
    except (_DerError, IndexError):
        return None
    return CertificateParts(tbs, inner, issuer, subject, algorithm, der[spos + 1:send], der[spos])


def _read_all(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        tag, value, pos = _read(data, pos)
        out.append((tag, value))
    return out


def _parse_hash_algid(der: bytes) -> str:
    tag, body, end = _read(der, 0)
    if tag != 0x30 or end != len(der):
        raise _DerError("hash AlgorithmIdentifier")
    items = _read_all(body)
    if not items or items[0][0] != 0x06 or items[0][1] not in _HASH_BY_OID:
        raise _DerError("unknown hash")
    if len(items) > 2 or (len(items) == 2 and items[1] != (0x05, b"")):
        raise _DerError("hash parameters")
    return _HASH_BY_OID[items[0][1]]


def _parse_pss_params(der: bytes) -> SigAlg:
    # RFC 4055 3.1: RSASSA-PSS-params; defaults (SHA-1, MGF1-SHA-1, 20) apply to absent fields
    hash_name, mgf_hash, salt = "sha1", "sha1", 20
    for tag, value in _read_all(der):
        if tag == 0xA0:
            hash_name = _parse_hash_algid(value)
        elif tag == 0xA1:
            t, mgf, _ = _read(value, 0)
            items = _read_all(mgf) if t == 0x30 else []
            if len(items) != 2 or items[0] != (0x06, _OID_MGF1):
                raise _DerError("mask generation function")
            mgf_hash = _parse_hash_algid(_tlv(items[1][0], items[1][1]))
        elif tag == 0xA2:
            t, v, _ = _read(value, 0)
            if t != 0x02 or not v or v[0] & 0x80:
                raise _DerError("salt length")
            salt = int.from_bytes(v, "big")
        elif tag == 0xA3:
            t, v, _ = _read(value, 0)
            if (t, v) != (0x02, b"\x01"):
                raise _DerError("trailer field")
        else:
            raise _DerError("unknown PSS parameter")
    return SigAlg("rsa-pss", hash_name, salt, mgf_hash)


def parse_algorithm_identifier(der: bytes) -> SigAlg | None:
    """The SigAlg for a DER AlgorithmIdentifier, or None if malformed or unsupported."""
    try:
        tag, body, end = _read(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        items = _read_all(body)
        if not items or items[0][0] != 0x06:
            return None
        oid, params = items[0][1], items[1:]
        if oid == _OID_PSS:
            if len(params) != 1 or params[0][0] != 0x30:
                return None
            return _parse_pss_params(params[0][1])
        if oid not in _BY_OID:
            return None
        kind, hash_name = _BY_OID[oid]
        # RSA: NULL parameters (absent tolerated); ECDSA / EdDSA: parameters absent (RFC 5758, 8410)
        if params and not (kind == "rsa" and params == [(0x05, b"")]):
            return None
        return SigAlg(kind, hash_name)
    except _DerError:
        return None
