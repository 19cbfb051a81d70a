"""Credentials.peer_cert and verify_cert with the DER keep what the check of a peer's certificate found, by
its octets (a peer reconnects with the same certificate): the issuer check (RFC 5280 6.1.3 (a)(1), (a)(4))
runs once per certificate, the validity periods (RFC 5280 4.1.2.5, (a)(2)) are compared with the time at
every use, and the kept results go when the trusted CAs change (a reload builds new Credentials; a store
whose `cas` list is changed in place empties them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from core_ike.constants import IdType
from core_ike.errors import AuthenticationFailed
from core_ike.ike import creds as creds_mod
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import Identity

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
INSIDE = (T0 + DAY).timestamp()
CA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_CA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EE_KEY = ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str, issuer: str, signer: Any, public: Any, *, ca: bool = False, days: int = 30,
          start: dt.datetime = T0) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer)).public_key(public)
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(start + days * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(signer, hashes.SHA256())


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


CA = _cert("Test CA", "Test CA", CA_KEY, CA_KEY.public_key(), ca=True, days=3650)
OTHER_CA = _cert("Other CA", "Other CA", OTHER_CA_KEY, OTHER_CA_KEY.public_key(), ca=True, days=3650)
ALICE = _der(_cert("alice.test", "Test CA", CA_KEY, EE_KEY.public_key()))


def test_a_returning_certificate_is_checked_once(checks: list[bool | None]) -> None:
    creds = Credentials(cas=[CA])
    first = creds.peer_cert(ALICE, INSIDE)
    again = creds.peer_cert(bytes(ALICE), INSIDE + 60)  # equal octets, another object
    assert again is first and checks == [True]
    assert first.cert.subject == _name("alice.test")
    assert first.key.public_numbers() == EE_KEY.public_key().public_numbers()
    assert first.key is again.key  # loaded once
    # verify_cert with the DER finds the same entry, whichever Certificate object it is given
    creds.verify_cert(x509.load_der_x509_certificate(ALICE), INSIDE, ALICE)
    assert checks == [True]
    # without the DER, the check runs as before
    creds.verify_cert(x509.load_der_x509_certificate(ALICE), INSIDE)
    assert len(creds._peer_certs) == 1


def test_a_changed_certificate_is_checked_again_and_refused(checks: list[bool | None]) -> None:
    creds = Credentials(cas=[CA])
    creds.peer_cert(ALICE, INSIDE)
    at = len(ALICE) - 5  # inside the signature value
    forged = ALICE[:at] + bytes((ALICE[at] ^ 1,)) + ALICE[at + 1:]
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found for 'CN=alice.test'"):
        creds.peer_cert(forged, INSIDE)
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found"):
        creds.peer_cert(forged, INSIDE)  # refusals are not kept: checked again
    # a signed octet changed, the signature (the octets the entry is found by) kept: compared in full, refused
    cn = ALICE.index(b"alice.test")
    renamed = ALICE[:cn] + b"b" + ALICE[cn + 1:]
    assert renamed[-32:] == ALICE[-32:]
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found for 'CN=blice.test'"):
        creds.peer_cert(renamed, INSIDE)
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found for 'CN=blice.test'"):
        creds.verify_cert(x509.load_der_x509_certificate(renamed), INSIDE, renamed)
    assert checks == [True, False, False, False, False]
    assert [p.der for p in creds._peer_certs.values()] == [ALICE]
    assert creds.peer_cert(ALICE, INSIDE).der == ALICE and len(checks) == 5
    # another certificate of the same CA: its own entry
    bob = _der(_cert("bob.test", "Test CA", CA_KEY, EE_KEY.public_key()))
    assert creds.peer_cert(bob, INSIDE).cert.subject == _name("bob.test")
    assert checks == [True, False, False, False, False, True]


def test_not_a_certificate() -> None:
    with pytest.raises(AuthenticationFailed, match=r"cannot parse peer certificate"):
        Credentials(cas=[CA]).peer_cert(b"\x30\x03\x02\x01\x01", INSIDE)


def test_validity_is_compared_with_the_time_at_each_use(checks: list[bool | None]) -> None:
    creds = Credentials(cas=[CA])
    creds.peer_cert(ALICE, INSIDE)  # kept
    end = (T0 + 30 * DAY).timestamp()
    assert creds.peer_cert(ALICE, end) is not None  # notAfter included
    with pytest.raises(AuthenticationFailed, match=r"^certificate expired on 2030-01-31 00:00:00 UTC"):
        creds.peer_cert(ALICE, end + 1)
    with pytest.raises(AuthenticationFailed, match=r"^certificate expired on 2030-01-31"):
        creds.verify_cert(x509.load_der_x509_certificate(ALICE), end + 1, ALICE)
    with pytest.raises(AuthenticationFailed, match=r"^certificate not valid before 2030-01-01"):
        creds.peer_cert(ALICE, T0.timestamp() - 1)
    with pytest.raises(AuthenticationFailed, match=r"no wall-clock time"):
        creds.peer_cert(ALICE, None)
    assert creds.peer_cert(ALICE, INSIDE) is not None  # still kept, valid again at that time
    assert checks == [True]


def test_an_expired_ca_under_a_kept_entry() -> None:
    # the CA's own period, compared at each use too (a renewed CA of the same name and key may stand beside)
    short_ca = _cert("Test CA", "Test CA", CA_KEY, CA_KEY.public_key(), ca=True, days=10, start=T0 - 5 * DAY)
    creds = Credentials(cas=[short_ca])
    creds.peer_cert(ALICE, INSIDE)
    with pytest.raises(AuthenticationFailed, match=r"CA certificate expired on 2030-01-06 00:00:00 UTC"):
        creds.peer_cert(ALICE, (T0 + 6 * DAY).timestamp())


def test_a_ca_removed_or_replaced_empties_the_kept_entries(checks: list[bool | None]) -> None:
    creds = Credentials(cas=[OTHER_CA, CA])
    creds.peer_cert(ALICE, INSIDE)
    creds.cas.remove(CA)  # in place, as a store changed by hand
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found for 'CN=alice.test'"):
        creds.peer_cert(ALICE, INSIDE)
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found"):
        creds.verify_cert(x509.load_der_x509_certificate(ALICE), INSIDE, ALICE)
    assert not creds._peer_certs
    creds.cas.append(CA)
    assert creds.peer_cert(ALICE, INSIDE).issuers[0].ca is CA
    # a reload builds new Credentials (daemon/config.py load): nothing kept from the old ones
    assert not Credentials(cas=[OTHER_CA])._peer_certs
    with pytest.raises(AuthenticationFailed, match=r"no trusted issuer found"):
        Credentials(cas=[OTHER_CA]).peer_cert(ALICE, INSIDE)


def test_the_identities_it_holds() -> None:
    pc = Credentials(cas=[CA]).peer_cert(ALICE, INSIDE)
    assert pc.holds(Identity.parse("@alice.test")) and pc.holds(Identity.parse("ALICE.test"))
    assert not pc.holds(Identity.parse("bob.test"))
    assert pc.holds(Identity(IdType.DER_ASN1_DN, _name("alice.test").public_bytes()))
    assert not pc.holds(Identity(IdType.DER_ASN1_DN, _name("bob.test").public_bytes()))
    assert not pc.holds(Identity.parse("alice@alice.test"))
    assert pc.holds(Identity.parse("@alice.test"))  # remembered: the same answer


def test_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(creds_mod, "PEER_CERT_CACHE_MAX", 2)
    creds = Credentials(cas=[CA])
    ders = [_der(_cert(f"p{i}.test", "Test CA", CA_KEY, EE_KEY.public_key())) for i in range(3)]
    for d in ders:
        creds.peer_cert(d, INSIDE)
    assert [p.der for p in creds._peer_certs.values()] == ders[1:]  # the oldest went first
