"""CERTREQ (RFC 7296 §3.7): a responder whose configuration for the initiator's addresses authenticates
peers by certificate asks for the initiator's certificate in its IKE_SA_INIT response (§1.2), with the
SHA-1 hashes of its trusted CAs' SubjectPublicKeyInfo; the initiator asks in its IKE_AUTH request. A peer
that sends its certificate only when asked (charon's default `send_cert = ifasked`) depends on it;
tests/interop/test_interop_certs.py checks that against charon.
"""

from __future__ import annotations

import hashlib

from ike_pair import make_pair
from test_ike_engine import _ca_and_cert, _up

from core_ike.codec.message import decode_message
from core_ike.codec.payloads import CertReqPayload
from core_ike.constants import CertEncoding, ExchangeType
from core_ike.ike import events as ev
from core_ike.ike.sa import IkeState


def _cas(n: int):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    out = []
    for i in range(n):
        key = rsa.generate_private_key(65537, 2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {i}")])
        out.append((key, name, _ca_and_cert(f"Test CA {i}", key, name, key)))
    return out


def _spki_sha1(cert) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha1(cert.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def _certified_pair(**kw):  # type: ignore[no-untyped-def]
    """Both sides with a certificate from CA 0, trusting CA 0 and CA 1 (no raw keys)."""
    from core_ike.ike.config import AuthConfig
    from core_ike.ike.identity import Identity

    cas = _cas(2)
    p = make_pair(auth="pubkey", **kw)
    for eng, me, peer in ((p.a, "alice@test", "bob@test"), (p.b, "bob@test", "alice@test")):
        cert = _ca_and_cert(me, cas[0][0], cas[0][1], eng.creds.private_keys[0])
        eng.creds.raw_keys.clear()
        eng.creds.public_keys.clear()
        eng.creds.cas.extend(c for _, _, c in cas)
        cfg = eng.configs[0]
        cfg.local = AuthConfig("pubkey", Identity.parse(me), certs=[cert])
        cfg.remote = AuthConfig("pubkey", Identity.parse(peer))
    return p, [c for _, _, c in cas]


def _certreqs(p, direction: str, exchange: int) -> list[CertReqPayload]:  # type: ignore[no-untyped-def]
    """The CERTREQ payloads in the plaintext part of the messages sent one way in `exchange`."""
    out: list[CertReqPayload] = []
    for side, d in p.wire:
        d = d[4:] if d[:4] == bytes(4) else d
        if side == direction and d[18] == exchange:
            out += [x for x in decode_message(d).payloads if isinstance(x, CertReqPayload)]
    return out


def test_responder_asks_for_the_initiators_certificate_in_ike_sa_init() -> None:
    p, cas = _certified_pair()
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED, p.of("a", ev.IkeSaFailed)
    (req,) = _certreqs(p, "b->a", ExchangeType.IKE_SA_INIT)
    assert req.encoding == CertEncoding.X509_SIGNATURE
    assert req.data == b"".join(_spki_sha1(c) for c in cas)  # 20 octets per trusted CA
    assert not _certreqs(p, "a->b", ExchangeType.IKE_SA_INIT)  # the request has none (§1.2)


def test_no_certreq_without_certificate_authentication_or_cas_or_when_disabled() -> None:
    p = make_pair()  # PSK both ways
    _up(p)
    assert not _certreqs(p, "b->a", ExchangeType.IKE_SA_INIT)
    p = make_pair(auth="pubkey")  # trusted raw public keys, no CA
    assert _up(p).state is IkeState.ESTABLISHED
    assert not _certreqs(p, "b->a", ExchangeType.IKE_SA_INIT)
    p, _ = _certified_pair(b_conf={"send_certreq": False})
    assert _up(p).state is IkeState.ESTABLISHED
    assert not _certreqs(p, "b->a", ExchangeType.IKE_SA_INIT)
