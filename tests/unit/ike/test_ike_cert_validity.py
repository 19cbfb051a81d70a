"""Certificate validity periods (RFC 5280 4.1.2.5, 6.1.3 (a)(2)) against a fake wall clock.

The sans-IO engine reads no clock: the adapter gives it the wall-clock time (`Engine.set_wall_clock`),
and the engine moves it on with its monotonic `now`. Here both are fake: the certificates' dates are
fixed points and the wall clock is put before, inside and after them.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ike_pair import Pair, make_pair

from core_ike.errors import AuthenticationFailed
from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import Identity
from core_ike.ike.sa import IkeState

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # the certificates' notBefore
DAY = dt.timedelta(days=1)
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Validity Test CA")])
CA_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(cn: str, key: object, start: dt.datetime, end: dt.datetime, *, ca: bool = False,
          san: str | None = None) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(CA_NAME if ca else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(CA_NAME).public_key(key.public_key())  # type: ignore[attr-defined]
         .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(san)]), critical=False)
    return b.sign(CA_KEY, hashes.SHA256())  # type: ignore[arg-type]


def _at(t: dt.datetime) -> float:
    return t.timestamp()


CA = _cert("", CA_KEY, T0 - 365 * DAY, T0 + 3650 * DAY, ca=True)
EE_KEY = ec.generate_private_key(ec.SECP256R1())
EE = _cert("alice", EE_KEY, T0, T0 + 30 * DAY)


def test_valid_inside_the_period_both_dates_included() -> None:
    c = Credentials(cas=[CA])
    for t in (T0, T0 + 10 * DAY, T0 + 30 * DAY):
        c.verify_cert(EE, _at(t))


def test_expired_certificate_refused_with_its_date() -> None:
    c = Credentials(cas=[CA])
    with pytest.raises(AuthenticationFailed, match=r"certificate expired on 2030-01-31 00:00:00 UTC \('CN=alice'\)"):
        c.verify_cert(EE, _at(T0 + 30 * DAY + dt.timedelta(seconds=1)))


def test_not_yet_valid_certificate_refused_with_its_date() -> None:
    c = Credentials(cas=[CA])
    with pytest.raises(AuthenticationFailed, match=r"certificate not valid before 2030-01-01 00:00:00 UTC"):
        c.verify_cert(EE, _at(T0 - dt.timedelta(seconds=1)))


def test_expired_ca_refused_and_a_renewed_one_accepted() -> None:
    old_ca = _cert("", CA_KEY, T0 - 365 * DAY, T0 + DAY, ca=True)
    c = Credentials(cas=[old_ca])
    with pytest.raises(AuthenticationFailed,
                       match=r"CA certificate expired on 2030-01-02 00:00:00 UTC \('CN=Validity Test CA'\), issuer of 'CN=alice'"):
        c.verify_cert(EE, _at(T0 + 2 * DAY))
    c.verify_cert(EE, _at(T0))  # the CA was still valid then
    c.cas.append(CA)  # the same name and key, renewed: one valid CA suffices
    c.verify_cert(EE, _at(T0 + 2 * DAY))


def test_no_wall_clock_no_certificate() -> None:
    with pytest.raises(AuthenticationFailed, match="no wall-clock time"):
        Credentials(cas=[CA]).verify_cert(EE, None)


def test_untrusted_issuer_reported_before_the_dates() -> None:
    with pytest.raises(AuthenticationFailed, match="no trusted issuer"):
        Credentials().verify_cert(EE, _at(T0 + 365 * DAY))


# ------------------------------------------------------------------ the engine, both roles
def _certified_pair(a_until: dt.datetime, b_until: dt.datetime) -> Pair:
    """alice (initiator a) and bob (responder b), each with a certificate of CA valid from T0 to the
    given date, trusting only CA; both wall clocks at T0 + 1 day."""
    p = make_pair(auth="pubkey")
    for eng, me, peer, until in ((p.a, "alice@test", "bob@test", a_until), (p.b, "bob@test", "alice@test", b_until)):
        cert = _cert(me, eng.creds.private_keys[0], T0, until, san=me)
        eng.creds.raw_keys.clear()
        eng.creds.cas.append(CA)
        cfg = eng.configs[0]
        cfg.local = AuthConfig("pubkey", Identity.parse(me), certs=[cert])
        cfg.remote = AuthConfig("pubkey", Identity.parse(peer))
        eng.set_wall_clock(_at(T0 + DAY), p.now)
    return p


def _up(p: Pair) -> None:
    p.a.initiate("home", now=p.now)
    p.pump()


def test_both_certificates_valid_establishes() -> None:
    p = _certified_pair(T0 + 30 * DAY, T0 + 30 * DAY)
    _up(p)
    assert p.a.ike_sas()[0].state is IkeState.ESTABLISHED


def test_responder_refuses_the_initiators_expired_certificate() -> None:
    p = _certified_pair(T0 + DAY / 2, T0 + 30 * DAY)
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert fb.authentication and "certificate expired on 2030-01-01 12:00:00 UTC ('CN=alice@test')" in fb.reason
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.authentication  # told AUTHENTICATION_FAILED (RFC 7296 2.21.2)
    assert not p.of("b", ev.IkeSaEstablished)


def test_initiator_refuses_the_responders_expired_certificate() -> None:
    p = _certified_pair(T0 + 30 * DAY, T0 + DAY / 2)
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.authentication and "certificate expired on 2030-01-01 12:00:00 UTC ('CN=bob@test')" in fa.reason
    assert not p.of("a", ev.IkeSaEstablished)


def test_the_wall_clock_moves_with_the_engines_clock() -> None:
    """Given once, the wall-clock time advances with `now`: a certificate valid when it was given
    has expired once the fake clock passed its notAfter."""
    p = _certified_pair(T0 + 30 * DAY, T0 + DAY + dt.timedelta(hours=1))
    p.advance(2 * 3600)
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert "certificate expired on 2030-01-02 01:00:00 UTC ('CN=bob@test')" in fa.reason


def test_an_engine_without_wall_clock_refuses_certificates() -> None:
    p = _certified_pair(T0 + 30 * DAY, T0 + 30 * DAY)
    p.b.wall_offset = None  # an adapter that gave none
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "no wall-clock time to check the validity of certificate 'CN=alice@test'" in fb.reason
