"""Credentials.verify_cert with the certificate's DER: the issuer check over the octets as signed, with a CA
key object kept per CA, decides exactly as `cryptography`'s Certificate.verify_directly_issued_by (the
check without the DER): the same certificates accepted, the same refused with the same reason.
RFC 5280 4.1.1.2 (the two signature algorithm fields), 4.1.1.3 (the signature over tbsCertificate),
6.1.3 (a)(1)-(2), (a)(4) (signature, validity, issuer name)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from core_ike.crypto.sigalg import certificate_parts, parse_algorithm_identifier
from core_ike.errors import AuthenticationFailed
from core_ike.ike.creds import Credentials

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
WALL = (T0 + dt.timedelta(days=1)).timestamp()

_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())
_ED_KEY = ed25519.Ed25519PrivateKey.generate()
_EE_KEY = ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, signer: Any, public: Any, *, ca: bool = False,
          hash_alg: hashes.HashAlgorithm | None = None, pss: bool = False,
          days: int = 30) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(public).serial_number(x509.random_serial_number())
         .not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return b.sign(signer, None)
    if pss:
        return b.sign(signer, hashes.SHA256(),
                      rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
    return b.sign(signer, hash_alg or hashes.SHA256())


def _ca(name: str, key: Any) -> x509.Certificate:
    return _cert(name, name, key, key.public_key(), ca=True, days=365)


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def _outcome(c: Credentials, der: bytes, with_der: bool) -> str:
    """"ok", or the refusal's text, or "unparsable" (the engine refuses those before the check)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "unparsable"
    try:
        c.verify_cert(cert, WALL, der if with_der else b"")
    except AuthenticationFailed as e:
        return str(e)
    return "ok"


def _flip(der: bytes, at: int) -> bytes:
    return der[:at] + bytes((der[at] ^ 0x01,)) + der[at + 1:]


def _variants(ca_key: Any, **kw: Any) -> dict[str, bytes]:
    """An end-entity certificate issued by CA "Test CA" with `ca_key`, and altered copies of it."""
    good = _der(_cert("alice.test", "Test CA", ca_key, _EE_KEY.public_key(), **kw))
    parts = certificate_parts(good)
    assert parts is not None
    cn = good.index(b"alice.test")  # in the subject: a signed octet changed, still a valid certificate
    sig_at = len(good) - 5  # inside the signature value
    out = {"good": good, "subject changed": _flip(good, cn), "signature changed": _flip(good, sig_at),
           "issued by another key": _der(_cert("alice.test", "Test CA", _RSA_OTHER, _EE_KEY.public_key())),
           "issued by another name": _der(_cert("alice.test", "Other CA", ca_key, _EE_KEY.public_key(), **kw))}
    # signatureAlgorithm other than tbsCertificate.signature (RFC 5280 4.1.1.2): sha256WithRSAEncryption
    # <-> sha384WithRSAEncryption, ecdsa-with-SHA256 <-> ecdsa-with-SHA384 in the outer field only
    outer = good.rindex(parts.algorithm)
    for a, b in ((bytes.fromhex("2a864886f70d01010b"), bytes.fromhex("2a864886f70d01010c")),
                 (bytes.fromhex("2a8648ce3d040302"), bytes.fromhex("2a8648ce3d040303"))):
        if a in parts.algorithm:
            out["outer algorithm changed"] = good[:outer] + parts.algorithm.replace(a, b) + good[
                outer + len(parts.algorithm):]
    return out


CASES: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
    ("rsa-sha256", lambda: _RSA_KEY, {}),
    ("rsa-sha384", lambda: _RSA_KEY, {"hash_alg": hashes.SHA384()}),
    ("rsa-sha512", lambda: _RSA_KEY, {"hash_alg": hashes.SHA512()}),
    ("rsa-pss", lambda: _RSA_KEY, {"pss": True}),
    ("ecdsa-p256", lambda: _EC_KEY, {}),
    ("ed25519", lambda: _ED_KEY, {}),
]


@pytest.mark.parametrize(("label", "key", "kw"), CASES, ids=[c[0] for c in CASES])
def test_with_der_the_same_decisions_as_cryptography(label: str, key: Callable[[], Any], kw: dict[str, Any]) -> None:
    ca_key = key()
    creds = Credentials(cas=[_ca("Test CA", ca_key)])
    variants = _variants(ca_key, **kw)
    for what, der in variants.items():
        fast, general = _outcome(creds, der, True), _outcome(creds, der, False)
        assert fast == general, (label, what)
        if what == "good":
            assert fast == "ok", label
        else:
            assert fast != "ok", (label, what)  # every alteration refused, parsed or not
    refused = [w for w, d in variants.items() if _outcome(creds, d, True) == "no trusted issuer found for "
               "'CN=alice.test'"]
    assert "subject changed" not in refused  # its subject reads differently in the message
    assert {"signature changed", "issued by another key", "issued by another name"} <= set(refused), label


def test_the_common_algorithms_are_checked_with_the_kept_key(checks: list[bool | None]) -> None:
    calls = checks
    ca = _ca("Test CA", _RSA_KEY)
    creds = Credentials(cas=[ca])
    good = _variants(_RSA_KEY)["good"]
    other = _der(_cert("bob.test", "Test CA", _RSA_KEY, _EE_KEY.public_key()))
    assert _outcome(creds, good, True) == "ok"
    assert _outcome(creds, other, True) == "ok"
    assert calls == [True, True]
    kept = creds._issuers
    assert len(kept) == 1 and kept[0].ca is ca
    assert _outcome(creds, good, True) == "ok" and creds._issuers is kept  # one key object per CA
    assert calls == [True, True]  # the same octets again: what was found is kept (Credentials.peer_cert)
    # RSASSA-PSS: left to cryptography (None), which accepts it
    pss = _variants(_RSA_KEY, pss=True)["good"]
    assert _outcome(creds, pss, True) == "ok" and calls[-1] is None
    # a store whose CAs change is recomputed
    creds.cas[:] = [_ca("Test CA", _RSA_OTHER)]
    assert _outcome(creds, good, True) == "no trusted issuer found for 'CN=alice.test'"
    assert creds._issuers[0].ca is creds.cas[0]


def test_a_renewed_ca_and_the_validity_periods_with_der() -> None:
    # two CAs, same name and key: the old one expired, the renewed one valid; and the certificate's own dates
    old = _cert("Test CA", "Test CA", _RSA_KEY, _RSA_KEY.public_key(), ca=True, days=1)
    new = _ca("Test CA", _RSA_KEY)
    ee = _cert("alice.test", "Test CA", _RSA_KEY, _EE_KEY.public_key())
    der = _der(ee)
    later = (T0 + dt.timedelta(days=2)).timestamp()
    Credentials(cas=[old, new]).verify_cert(ee, later, der)
    with pytest.raises(AuthenticationFailed, match=r"CA certificate expired on 2030-01-02 00:00:00 UTC"):
        Credentials(cas=[old]).verify_cert(ee, later, der)
    with pytest.raises(AuthenticationFailed, match=r"^certificate expired on 2030-01-31"):
        Credentials(cas=[new]).verify_cert(ee, (T0 + dt.timedelta(days=31)).timestamp(), der)
    with pytest.raises(AuthenticationFailed, match=r"^certificate not valid before 2030-01-01"):
        Credentials(cas=[new]).verify_cert(ee, T0.timestamp() - 1, der)
    Credentials(cas=[new]).verify_cert(ee, T0.timestamp(), der)  # notBefore included (RFC 5280 4.1.2.5)


def test_certificate_parts_are_the_signed_octets() -> None:
    for key, kw in ((_RSA_KEY, {}), (_EC_KEY, {}), (_RSA_KEY, {"pss": True})):
        c = _cert("alice.test", "Test CA", key, _EE_KEY.public_key(), **kw)
        der = _der(c)
        p = certificate_parts(der)
        assert p is not None
        assert p.tbs == c.tbs_certificate_bytes
        assert p.signature == c.signature and p.unused_bits == 0
        assert p.issuer == c.issuer.public_bytes()
        assert p.subject == c.subject.public_bytes()
        assert p.inner_algorithm == p.algorithm
        alg = parse_algorithm_identifier(p.algorithm)
        assert alg is not None and alg.kind == ("rsa-pss" if kw else "rsa" if key is _RSA_KEY else "ecdsa")
        assert alg.hash == "sha256"
        # not a certificate: truncated, trailing octets, another outer tag
        assert certificate_parts(der[:-1]) is None
        assert certificate_parts(der + b"\x00") is None
        assert certificate_parts(b"\x31" + der[1:]) is None
        assert certificate_parts(b"") is None


def test_expired_or_not_yet_valid_with_der_in_generalized_time() -> None:
    # dates after 2049 are GeneralizedTime (RFC 5280 4.1.2.5): the same decisions with the DER
    start = dt.datetime(2060, 6, 1, tzinfo=dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(_name("Test CA")).issuer_name(_name("Test CA"))
          .public_key(_RSA_KEY.public_key()).serial_number(1).not_valid_before(T0)
          .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(_RSA_KEY, hashes.SHA256()))
    ee = (x509.CertificateBuilder().subject_name(_name("alice.test")).issuer_name(_name("Test CA"))
          .public_key(_EE_KEY.public_key()).serial_number(2).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=1)).sign(_RSA_KEY, hashes.SHA256()))
    creds = Credentials(cas=[ca])
    for at, want in ((start, "ok"), (start + dt.timedelta(days=1), "ok"),
                     (start - dt.timedelta(seconds=1), "certificate not valid before 2060-06-01 00:00:00 UTC"),
                     (start + dt.timedelta(days=1, seconds=1), "certificate expired on 2060-06-02 00:00:00 UTC")):
        for der in (_der(ee), b""):
            try:
                creds.verify_cert(ee, at.timestamp(), der)
                got = "ok"
            except AuthenticationFailed as e:
                got = str(e).split(" ('")[0]
            assert got == want, (at, bool(der))
