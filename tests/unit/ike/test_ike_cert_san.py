"""An identity bound to a certificate by its subjectAltName (RFC 7296 3.5, RFC 4945 3.1): `san_holds` and
the IKE_AUTH check that uses it.

The table's certificates carry their subjectAltName as raw octets (an UnrecognizedExtension under the
SAN's OID), so that encodings the builder would not write can be tried; no signature is checked here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from core_ike.constants import IdType
from core_ike.crypto.sigalg import certificate_subject
from core_ike.ike.identity import Identity, cert_holds, san_holds

KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "san test")])
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(ln))) + ln + value


def dns(v: bytes) -> bytes:
    return _tlv(0x82, v)


def mail(v: bytes) -> bytes:
    return _tlv(0x81, v)


def ip(v: str) -> bytes:
    return _tlv(0x87, ipaddress.ip_address(v).packed)


def uri(v: bytes) -> bytes:
    return _tlv(0x86, v)


def names(*gn: bytes) -> bytes:
    return _tlv(0x30, b"".join(gn))


def cert(san: bytes | None, *, critical: bool = False, extra: list[x509.ExtensionType] = ()) -> tuple[  # type: ignore[assignment]
        x509.Certificate, bytes]:
    b = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
         .serial_number(7).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=1)))
    for e in extra:
        b = b.add_extension(e, critical=False)
    if san is not None:
        b = b.add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san), critical=critical)
    c = b.sign(KEY, hashes.SHA256())
    der = c.public_bytes(serialization.Encoding.DER)
    return x509.load_der_x509_certificate(der), der


FQDN = Identity(IdType.FQDN, b"moon.strongswan.org")
MAIL = Identity(IdType.RFC822_ADDR, b"carol@strongswan.org")
V4 = Identity(IdType.IPV4_ADDR, ipaddress.ip_address("192.0.2.1").packed)
V6 = Identity(IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed)

# (subjectAltName octets or None, critical, identity, expected decision)
TABLE: list[tuple[str, bytes | None, bool, Identity, bool]] = [
    ("plain dNSName", names(dns(b"moon.strongswan.org")), False, FQDN, True),
    ("other dNSName", names(dns(b"sun.strongswan.org")), False, FQDN, False),
    ("SAN critical", names(dns(b"moon.strongswan.org")), True, FQDN, True),
    ("several names, the last", names(dns(b"a.org"), mail(b"x@y.org"), ip("10.0.0.1"), dns(b"moon.strongswan.org")),
     False, FQDN, True),
    ("uppercase in the certificate", names(dns(b"MOON.StrongSwan.ORG")), False, FQDN, True),
    ("uppercase in the identity", names(dns(b"moon.strongswan.org")), False,
     Identity(IdType.FQDN, b"Moon.StrongSwan.org"), True),
    ("trailing dot in the certificate", names(dns(b"moon.strongswan.org.")), False, FQDN, False),
    ("trailing dot in the identity", names(dns(b"moon.strongswan.org")), False,
     Identity(IdType.FQDN, b"moon.strongswan.org."), False),
    ("wildcard not expanded", names(dns(b"*.strongswan.org")), False, FQDN, False),
    ("wildcard only as itself", names(dns(b"*.strongswan.org")), False, Identity(IdType.FQDN, b"*.strongswan.org"),
     True),
    ("punycode A-label", names(dns(b"xn--bcher-kva.example")), False, Identity(IdType.FQDN, b"xn--bcher-kva.example"),
     True),
    ("A-label against the U-label", names(dns(b"xn--bcher-kva.example")), False,
     Identity(IdType.FQDN, "bücher.example".encode()), False),
    ("IP in DNS form, IPv4 identity", names(dns(b"192.0.2.1")), False, V4, False),
    ("IP in DNS form, FQDN identity", names(dns(b"192.0.2.1")), False, Identity(IdType.FQDN, b"192.0.2.1"), True),
    ("dNSName as rfc822Name", names(mail(b"moon.strongswan.org")), False, FQDN, False),
    ("URI with the name", names(uri(b"https://moon.strongswan.org/")), False, FQDN, False),
    ("a prefix", names(dns(b"moon.strongswan.or")), False, FQDN, False),
    ("a longer name", names(dns(b"xmoon.strongswan.org")), False, FQDN, False),
    ("rfc822Name", names(mail(b"carol@strongswan.org")), False, MAIL, True),
    ("rfc822Name host in uppercase", names(mail(b"carol@StrongSwan.ORG")), False, MAIL, True),
    ("rfc822Name local part in uppercase", names(mail(b"Carol@strongswan.org")), False, MAIL, False),
    ("rfc822Name as dNSName", names(dns(b"carol@strongswan.org")), False, MAIL, False),
    ("rfc822Name without local part", names(mail(b"strongswan.org")), False,
     Identity(IdType.RFC822_ADDR, b"@STRONGSWAN.org"), False),
    ("IPv4", names(ip("192.0.2.1")), False, V4, True),
    ("IPv4, other", names(ip("192.0.2.2")), False, V4, False),
    ("IPv6", names(dns(b"a.org"), ip("2001:db8::1")), False, V6, True),
    ("IPv4-mapped IPv6 against IPv4", names(ip("::ffff:192.0.2.1")), False, V4, False),
    ("IPv4 identity of 16 octets", names(ip("2001:db8::1")), False, Identity(IdType.IPV4_ADDR, V6.data), False),
    ("IPv4 identity of 5 octets", names(ip("192.0.2.1")), False, Identity(IdType.IPV4_ADDR, V4.data + b"\0"), False),
    ("no subjectAltName", None, False, FQDN, False),
    ("directoryName", names(_tlv(0xA4, NAME.public_bytes()), dns(b"moon.strongswan.org")), False, FQDN, True),
    ("iPAddress network form", names(_tlv(0x87, bytes(4) + b"\xff\xff\xff\x00"), dns(b"moon.strongswan.org")), False,
     FQDN, True),
    ("long-form lengths", names(*[dns(b"n%03d.example" % i) for i in range(20)], dns(b"moon.strongswan.org")), False,
     FQDN, True),
    ("KEY_ID identity", names(dns(b"moon.strongswan.org")), False, Identity(IdType.KEY_ID, b"moon"), False),
]


@pytest.mark.parametrize(("what", "san", "critical", "ident", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_the_identity_in_the_subject_alt_name(what: str, san: bytes | None, critical: bool, ident: Identity,
                                              expected: bool) -> None:
    c, der = cert(san, critical=critical)
    assert san_holds(c, ident) is expected
    assert cert_holds(c, ident, certificate_subject(der)) is expected


@pytest.mark.parametrize(("what", "san", "ident"), [
    ("directoryName", names(_tlv(0xA4, NAME.public_bytes()), dns(b"moon.strongswan.org")), FQDN),
    ("iPAddress network form", names(_tlv(0x87, bytes(8)), dns(b"moon.strongswan.org")), FQDN),
    ("non-ASCII dNSName", names(dns("mönd.org".encode())), FQDN),
    ("non-ASCII identity", names(dns(b"moon.strongswan.org")), Identity(IdType.FQDN, "mönd.org".encode())),
    ("empty GeneralNames", names(), FQDN),
    ("length not in its shortest form", b"\x30\x81\x15" + dns(b"moon.strongswan.org"), FQDN),
    ("trailing octets", names(dns(b"moon.strongswan.org")) + b"\x00", FQDN),
    ("constructed dNSName", names(_tlv(0xA2, dns(b"moon.strongswan.org"))), FQDN),
    ("otherName", names(_tlv(0xA0, _tlv(0x06, b"\x2b\x06\x01") + _tlv(0xA0, _tlv(0x0C, b"x"))),
                        dns(b"moon.strongswan.org")), FQDN),
])
def test_unusual_encodings_decide_without_an_exception(what: str, san: bytes, ident: Identity) -> None:
    c, der = cert(san)
    # whatever cryptography makes of it, the decision is a boolean, never an exception
    assert isinstance(san_holds(c, ident), bool)
    assert cert_holds(c, ident, certificate_subject(der)) is san_holds(c, ident)


def test_a_duplicate_extension_holds_no_identity() -> None:
    san = names(dns(b"moon.strongswan.org"))
    other = x509.ObjectIdentifier("2.5.29.99")
    _, der = cert(san, extra=[x509.UnrecognizedExtension(other, san)])
    # the second extension's OID made the SAN's (the signature no longer verifies: not checked here)
    der = der.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")
    c = x509.load_der_x509_certificate(der)
    # RFC 5280 4.2: a certificate holds one instance of an extension; cryptography refuses it: no identity
    assert cert_holds(c, FQDN, certificate_subject(der)) is False


def test_builder_written_certificates() -> None:
    """Certificates as cryptography's builder writes them (charon's and the portal's are alike)."""
    for gn, ident, expected in [
            (x509.DNSName("moon.strongswan.org"), FQDN, True),
            (x509.RFC822Name("carol@strongswan.org"), MAIL, True),
            (x509.IPAddress(ipaddress.ip_address("192.0.2.1")), V4, True),
            (x509.IPAddress(ipaddress.ip_address("2001:db8::1")), V6, True),
            (x509.IPAddress(ipaddress.ip_address("2001:db8::2")), V6, False)]:
        c = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
             .serial_number(9).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=1))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName("x.org"), gn]), critical=False)
             .sign(KEY, hashes.SHA256()))
        assert san_holds(c, ident) is expected
