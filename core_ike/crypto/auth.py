"""AUTH payload computation (RFC 7296 2.15, RFC 4754, RFC 7427, RFC 8420) and key identifiers.

Signed octets: RealMessage | NonceData(peer) | prf(SK_p, RestOfIDPayload). PSK AUTH:
prf(prf(PSK, "Key Pad for IKEv2"), octets). Signatures: method 1 (RSA PKCS#1 v1.5 SHA-1), 9/10/11
(ECDSA, r || s fixed length), 14 (length octet | AlgorithmIdentifier DER | signature).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection
from typing import Any, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ..constants import AuthMethod, HashAlgorithm
from ..errors import LocalError
from .prf import Prf
from .sigalg import SigAlg, algorithm_identifier, parse_algorithm_identifier

__all__ = [
    "KEY_PAD",
    "SUPPORTED_SIGNATURE_HASHES",
    "PrivateKey",
    "PublicKey",
    "create_signature_auth",
    "keyid_sha1",
    "load_private_key",
    "load_public_key",
    "psk_auth",
    "psk_mac",
    "signed_octets",
    "spki_sha1",
    "verify_certificate_signature",
    "verify_psk_auth",
    "verify_signature_auth",
]

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 2.15: 17 ASCII octets, no NUL terminator

# RFC 7427 4: what we announce in N(SIGNATURE_HASH_ALGORITHMS)
SUPPORTED_SIGNATURE_HASHES: tuple[int, ...] = (
    HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY,
)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
# hash and padding objects hold no state: one of each serves every signature
_HASH_OBJ: dict[str, hashes.HashAlgorithm] = {name: cls() for name, cls in _HASHES.items()}
_PKCS1 = padding.PKCS1v15()


# A signature covers the hash of the octets (RFC 8017 8.2, 9.2; FIPS 186-5 6.4): the hash is taken with
# hashlib, whose libcrypto the PRF's HMACs have just run in the same datagram, and handed over as
# Prehashed; `cryptography`'s own digest machinery (its context, fetch and hash code) would start cold
# after every wait between datagrams. The signature is the same.
def _digest_with(empty: Any) -> Callable[[bytes], bytes]:
    # a copy of a kept empty context, as the PRF's HMACs do (core_ike/crypto/prf.py): no digest fetch and
    # init per call, and the same library code the PRF has just run
    def digest(data: bytes) -> bytes:
        h = empty.copy()
        h.update(data)
        out: bytes = h.digest()
        return out

    return digest


_DIGEST: dict[str, Callable[[bytes], bytes]] = {
    "sha1": _digest_with(hashlib.sha1()), "sha256": _digest_with(hashlib.sha256()),
    "sha384": _digest_with(hashlib.sha384()), "sha512": _digest_with(hashlib.sha512()),
}
_PREHASHED: dict[str, Prehashed] = {name: Prehashed(h) for name, h in _HASH_OBJ.items()}
_ECDSA_PREHASHED: dict[str, ec.ECDSA] = {name: ec.ECDSA(p) for name, p in _PREHASHED.items()}
_PSS: dict[tuple[str, str, int], padding.PSS] = {}  # (hash, MGF1 hash, salt length) -> padding
_HASH_ID = {"sha1": HashAlgorithm.SHA1, "sha256": HashAlgorithm.SHA2_256,
            "sha384": HashAlgorithm.SHA2_384, "sha512": HashAlgorithm.SHA2_512}

# RFC 4754 3 / RFC 7296 3.8: ECDSA methods bind curve and hash
_ECDSA_METHODS: dict[int, tuple[str, str, int]] = {
    AuthMethod.ECDSA_256: ("secp256r1", "sha256", 32),
    AuthMethod.ECDSA_384: ("secp384r1", "sha384", 48),
    AuthMethod.ECDSA_521: ("secp521r1", "sha512", 66),
}
# enum members bound once: reading one off its class runs Python 3.11's EnumType.__getattr__ hook
_DIGITAL_SIGNATURE, _RSA_SIG = AuthMethod.DIGITAL_SIGNATURE, AuthMethod.RSA_SIG
_CURVE_METHOD = {curve: m for m, (curve, _, _) in _ECDSA_METHODS.items()}


# --- RFC 7296 2.15: signed octets and PSK ------------------------------------------------------

def signed_octets(real_message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_body: bytes) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 2.15).

    `real_message` is our IKE_SA_INIT message as sent (from the IKE header on), `peer_nonce` the
    other side's Nonce data, `sk_p` our SK_pi/SK_pr, `id_body` our ID payload body as on the wire
    (IDType | RESERVED | data). The verifier uses the peer's message, our nonce, SK_p of the peer.
    """
    return real_message + peer_nonce + prf(sk_p, id_body)


# (PRF, secret) -> prf(prf(secret, KEY_PAD), .), per configured key: its HMAC pads absorbed once
_PADDED_PSKS: dict[tuple[int, bytes], Callable[[bytes], bytes]] = {}


def psk_mac(prf: Prf, psk: bytes) -> Callable[[bytes], bytes]:
    """`lambda octets: psk_auth(prf, psk, octets)`, kept per configured key: for a responder, which
    checks the peer's AUTH and makes its own with the same key (RFC 7296 2.15)."""
    key = (prf.prf_id, psk)
    mac = _PADDED_PSKS.get(key)
    if mac is None:
        mac = prf.keyed(prf(psk, KEY_PAD))
        if len(_PADDED_PSKS) < 1024:
            _PADDED_PSKS[key] = mac
    return mac


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH data for method 2: prf(prf(Shared Secret, "Key Pad for IKEv2"), octets)."""
    return psk_mac(prf, psk)(octets)


def verify_psk_auth(prf: Prf, psk: bytes, octets: bytes, data: bytes) -> bool:
    return hmac.compare_digest(psk_auth(prf, psk, octets), data)


# --- signatures ------------------------------------------------------------------------------------

_KEY_ABCS = (rsa.RSAPrivateKey, rsa.RSAPublicKey, ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey,
             ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey, ed448.Ed448PrivateKey, ed448.Ed448PublicKey)
_KINDS: dict[type, type | None] = {}  # a key object's class -> the one of _KEY_ABCS it is an instance of


def key_kind(key: object) -> type | None:
    """The one of `cryptography`'s key interfaces in _KEY_ABCS (rsa.RSAPrivateKey, ...) `key` implements,
    None for another object. The same answer as isinstance, which for these interfaces (abc.ABCMeta,
    the backend's classes registered with them) runs abc's Python-level check on every call; here it
    runs once per class."""
    t = type(key)
    try:
        return _KINDS[t]
    except KeyError:
        pass
    kind = next((abc for abc in _KEY_ABCS if isinstance(key, abc)), None)
    if len(_KINDS) < 64:
        _KINDS[t] = kind
    return kind


def _pss(hash_name: str, mgf_hash: str, salt_length: int) -> padding.PSS:
    key = (hash_name, mgf_hash, salt_length)
    pad = _PSS.get(key)
    if pad is None:
        pad = padding.PSS(mgf=padding.MGF1(_HASH_OBJ[mgf_hash]), salt_length=salt_length)
        if len(_PSS) < 64:
            _PSS[key] = pad
    return pad


def _ec_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    return key.curve.name


def _pick_hash(key: PrivateKey, peer_hash_algs: Collection[int]) -> str | None:
    """A RFC 7427 hash the peer announced, preferring the one matching the key's strength."""
    if key_kind(key) is ec.EllipticCurvePrivateKey:
        pref = {"secp384r1": ["sha384", "sha512", "sha256"], "secp521r1": ["sha512", "sha384", "sha256"]}
        order = pref.get(_ec_curve(cast(ec.EllipticCurvePrivateKey, key)), ["sha256", "sha384", "sha512"])
    else:
        order = ["sha256", "sha384", "sha512"]
    for name in order:
        if _HASH_ID[name] in peer_hash_algs:
            return name
    return None


def _legacy_method(key: PrivateKey) -> int:
    if isinstance(key, rsa.RSAPrivateKey):
        return AuthMethod.RSA_SIG
    if isinstance(key, ec.EllipticCurvePrivateKey) and _ec_curve(key) in _CURVE_METHOD:
        return _CURVE_METHOD[_ec_curve(key)]
    raise LocalError(f"no classic AUTH method for a {type(key).__name__}; peer must support RFC 7427")


def create_signature_auth(
    private_key: PrivateKey, method: int, octets: bytes, peer_hash_algs: Collection[int],
    rsa_pss: bool = False,
) -> tuple[int, bytes]:
    """Sign `octets`; returns (AUTH method, AUTH data).

    With method 14 (RFC 7427) a hash the peer announced in SIGNATURE_HASH_ALGORITHMS is used; if
    it announced none we can use, RSA and ECDSA keys fall back to methods 1 / 9-11 (RFC 7427 4).
    EdDSA always uses method 14 (RFC 8420). `rsa_pss` selects RSASSA-PSS for RSA under method 14.
    """
    kind = key_kind(private_key)
    if kind is ed25519.Ed25519PrivateKey or kind is ed448.Ed448PrivateKey:
        ed = cast(ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey, private_key)
        name = "ed25519" if kind is ed25519.Ed25519PrivateKey else "ed448"
        return _DIGITAL_SIGNATURE, _with_algid(name, None, ed.sign(octets))
    if method == _DIGITAL_SIGNATURE:
        hash_name = _pick_hash(private_key, peer_hash_algs)
        if hash_name is not None:
            return _DIGITAL_SIGNATURE, _sign_rfc7427(private_key, hash_name, octets, rsa_pss)
        method = _legacy_method(private_key)
    return method, _sign_legacy(private_key, method, octets)


# (kind, hash, salt length) -> length octet | DER AlgorithmIdentifier (a handful); a plain tuple as the
# key, hashed in C, where a SigAlg would be built and hashed by its generated Python methods per signature
_ALGIDS: dict[tuple[str, str | None, int], bytes] = {}
_PARSED_ALGIDS: dict[bytes, SigAlg | None] = {}  # a peer's AlgorithmIdentifier octets -> SigAlg
ALGID_CACHE_MAX = 64


def _with_algid(kind: str, hash_name: str | None, signature: bytes, salt_length: int = 0) -> bytes:
    key = (kind, hash_name, salt_length)
    head = _ALGIDS.get(key)
    if head is None:
        der = algorithm_identifier(SigAlg(kind, hash_name, salt_length))
        head = bytes((len(der),)) + der  # RFC 7427 3
        if len(_ALGIDS) < ALGID_CACHE_MAX:
            _ALGIDS[key] = head
    return head + signature


def _parsed_algid(der: bytes) -> SigAlg | None:
    """`parse_algorithm_identifier`, kept by octets: peers send the same few (bounded; a flood of
    varied ones only empties it)."""
    try:
        return _PARSED_ALGIDS[der]
    except KeyError:
        pass
    alg = parse_algorithm_identifier(der)
    if len(_PARSED_ALGIDS) >= ALGID_CACHE_MAX:
        _PARSED_ALGIDS.clear()
    _PARSED_ALGIDS[der] = alg
    return alg


def _sign_rfc7427(key: PrivateKey, hash_name: str, octets: bytes, rsa_pss: bool) -> bytes:
    h = _HASH_OBJ[hash_name]
    kind = key_kind(key)
    if kind is rsa.RSAPrivateKey:
        key = cast(rsa.RSAPrivateKey, key)
        digest = _DIGEST[hash_name](octets)
        if rsa_pss:  # RFC 7427 A.4.3 / RFC 4055: MGF1 with the same hash, salt = hash length
            pss = _pss(hash_name, hash_name, h.digest_size)
            return _with_algid("rsa-pss", hash_name, key.sign(digest, pss, _PREHASHED[hash_name]), h.digest_size)
        return _with_algid("rsa", hash_name, key.sign(digest, _PKCS1, _PREHASHED[hash_name]))
    if kind is ec.EllipticCurvePrivateKey:
        key = cast(ec.EllipticCurvePrivateKey, key)
        digest = _DIGEST[hash_name](octets)
        return _with_algid("ecdsa", hash_name, key.sign(digest, _ECDSA_PREHASHED[hash_name]))  # DER sig
    raise LocalError(f"cannot sign with a {type(key).__name__}")


def _sign_legacy(key: PrivateKey, method: int, octets: bytes) -> bytes:
    if method == AuthMethod.RSA_SIG:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise LocalError("AUTH method 1 needs an RSA key")
        return key.sign(_DIGEST["sha1"](octets), _PKCS1, _PREHASHED["sha1"])  # RFC 7296 3.8
    if method in _ECDSA_METHODS:
        curve, hash_name, flen = _ECDSA_METHODS[method]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _ec_curve(key) != curve:
            raise LocalError(f"AUTH method {method} needs a {curve} key")
        r, s = decode_dss_signature(key.sign(_DIGEST[hash_name](octets), _ECDSA_PREHASHED[hash_name]))
        return r.to_bytes(flen, "big") + s.to_bytes(flen, "big")  # RFC 4754 7: r || s
    raise LocalError(f"unsupported signature AUTH method {method}")


def verify_signature_auth(public_key: PublicKey, method: int, data: bytes, octets: bytes) -> bool:
    """Check AUTH data of method 1, 9-11 or 14 against `octets`; False on any mismatch."""
    try:
        if method == _DIGITAL_SIGNATURE:
            return _verify_rfc7427(public_key, data, octets)
        kind = key_kind(public_key)
        if method == _RSA_SIG and kind is rsa.RSAPublicKey:
            cast(rsa.RSAPublicKey, public_key).verify(data, _DIGEST["sha1"](octets), _PKCS1, _PREHASHED["sha1"])
            return True
        if method in _ECDSA_METHODS and kind is ec.EllipticCurvePublicKey:
            public_key = cast(ec.EllipticCurvePublicKey, public_key)
            curve, hash_name, flen = _ECDSA_METHODS[method]
            if _ec_curve(public_key) != curve or len(data) != 2 * flen:
                return False
            der = encode_dss_signature(int.from_bytes(data[:flen], "big"), int.from_bytes(data[flen:], "big"))
            public_key.verify(der, _DIGEST[hash_name](octets), _ECDSA_PREHASHED[hash_name])
            return True
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return False


def _verify_rfc7427(key: PublicKey, data: bytes, octets: bytes) -> bool:
    # RFC 7427 3: ASN.1 length (1 octet) | AlgorithmIdentifier | Signature Value
    if not data or len(data) < 1 + data[0]:
        return False
    alg = _parsed_algid(data[1 : 1 + data[0]])
    sig = data[1 + data[0] :]
    if alg is None:
        return False
    if ((alg.kind == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey))
            or (alg.kind == "ed448" and isinstance(key, ed448.Ed448PublicKey))):
        key.verify(sig, octets)  # RFC 8420: PureEdDSA over the whole octets
        return True
    if alg.hash is None:
        return False
    kind = key_kind(key)
    if alg.kind == "rsa" and kind is rsa.RSAPublicKey:
        cast(rsa.RSAPublicKey, key).verify(sig, _DIGEST[alg.hash](octets), _PKCS1, _PREHASHED[alg.hash])
        return True
    if alg.kind == "rsa-pss" and kind is rsa.RSAPublicKey and alg.mgf_hash is not None:
        cast(rsa.RSAPublicKey, key).verify(sig, _DIGEST[alg.hash](octets),
                                           _pss(alg.hash, alg.mgf_hash, alg.salt_length), _PREHASHED[alg.hash])
        return True
    if alg.kind == "ecdsa" and kind is ec.EllipticCurvePublicKey:
        key = cast(ec.EllipticCurvePublicKey, key)
        # DER Ecdsa-Sig-Value (RFC 7427 3)
        key.verify(sig, _DIGEST[alg.hash](octets), _ECDSA_PREHASHED[alg.hash])
        return True
    return False


def verify_certificate_signature(issuer_key: PublicKey, algorithm: bytes, tbs: bytes, signature: bytes) -> bool | None:
    """Whether `signature` is the issuer's over a certificate's `tbs` (RFC 5280 4.1.1.3; `algorithm`: the
    signatureAlgorithm's DER): True or False for PKCS#1 v1.5 RSA, ECDSA, Ed25519 and Ed448, as
    `cryptography`'s Certificate.verify_directly_issued_by verifies them (the same key methods and padding,
    over the same hash); None for another algorithm (RSASSA-PSS among them) or one that does not fit the key, which that
    method judges. The key object is the caller's to keep: one per CA serves every certificate it issued."""
    alg = _parsed_algid(algorithm)
    if alg is None:
        return None
    kind = key_kind(issuer_key)
    try:
        if alg.kind == "rsa" and kind is rsa.RSAPublicKey and alg.hash is not None:
            cast(rsa.RSAPublicKey, issuer_key).verify(signature, _DIGEST[alg.hash](tbs), _PKCS1,
                                                      _PREHASHED[alg.hash])
        elif alg.kind == "ecdsa" and kind is ec.EllipticCurvePublicKey and alg.hash is not None:
            cast(ec.EllipticCurvePublicKey, issuer_key).verify(signature, _DIGEST[alg.hash](tbs),
                                                               _ECDSA_PREHASHED[alg.hash])
        elif (alg.kind == "ed25519" and kind is ed25519.Ed25519PublicKey) or (
                alg.kind == "ed448" and kind is ed448.Ed448PublicKey):
            cast(ed25519.Ed25519PublicKey | ed448.Ed448PublicKey, issuer_key).verify(signature, tbs)
        else:
            return None
    except InvalidSignature:
        return False
    return True


# --- key identifiers and loading --------------------------------------------------------------------

def _subject_public_key(key: PublicKey) -> bytes:
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid_sha1(public_key: PublicKey) -> bytes:
    """KEYID_PUBKEY_SHA1: SHA-1 of the SPKI BIT STRING contents (RFC 5280 4.2.1.2 method 1)."""
    return hashlib.sha1(_subject_public_key(public_key)).digest()


def spki_sha1(public_key: PublicKey) -> bytes:
    """SHA-1 of the whole SubjectPublicKeyInfo DER (RFC 7296 3.7 CERTREQ CA hashes)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(der).digest()


def load_private_key(data: bytes, password: bytes | None = None) -> PrivateKey:
    """PEM or DER; PKCS#8 or the traditional PKCS#1 / SEC1 formats."""
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError) as e:
        raise LocalError(f"cannot load private key: {e}") from None
    if not isinstance(key, PrivateKey):
        raise LocalError(f"unsupported private key type {type(key).__name__}")
    return key


def load_public_key(data: bytes) -> PublicKey:
    """PEM or DER; SubjectPublicKeyInfo, PKCS#1 RSAPublicKey, or an X.509 certificate's key."""
    pem = data.lstrip().startswith(b"-----")
    key: object
    try:
        if b"CERTIFICATE-----" in data:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        elif pem:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except ValueError as e:
        raise LocalError(f"cannot load public key: {e}") from None
    if not isinstance(key, PublicKey):
        raise LocalError(f"unsupported public key type {type(key).__name__}")
    return key
