"""What the IKE_SA_INIT / IKE_AUTH responder keeps between IKE_SAs (core_ike/ike/tasks/ike_init.py: the
negotiation outcome by the proposals' contents; core_ike/ike/creds.py: the CERTREQ hashes; ike_auth.py:
our certificates' DER; core_ike/crypto/auth.py: RFC 7427 AlgorithmIdentifiers; core_ike/crypto/prf.py:
one Prf per algorithm): a reloaded configuration is followed, one SA's state never reaches another, the
caches are bounded, and the shortcuts give what the full paths give."""

from __future__ import annotations

import dataclasses
import hmac

import pytest
from ike_pair import make_pair
from test_ike_engine import _ca_and_cert, _up

from core_ike.codec.message import Message, decode_message, encode_message
from core_ike.codec.payloads import IdPayload, KePayload, NoncePayload, SaPayload
from core_ike.constants import ExchangeType, HeaderFlag, IdType, PayloadType, PrfId, ProtocolId, TransformType
from core_ike.crypto import auth as auth_mod
from core_ike.crypto.prf import Prf, prf_for, prf_plus
from core_ike.crypto.proposals import parse_proposals
from core_ike.errors import AuthenticationFailed, DecodeError
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import cert_holds
from core_ike.ike.sa import IkeState
from core_ike.ike.tasks import ike_auth, ike_init


def _responder_sa(p):  # type: ignore[no-untyped-def]
    (sa,) = [s for s in p.b.ike_sas() if s.state is IkeState.ESTABLISHED]
    return sa


def test_a_reloaded_configuration_is_negotiated_not_the_kept_outcome() -> None:
    """The responder chose from its first proposals; after its configuration changed (what a reload
    does to engine.configs) the next IKE_SA_INIT from the same initiator gets the new choice."""
    offer = "aes128gcm16-prfsha256-x25519,aes256gcm16-prfsha384-x25519"
    p = make_pair(offer, b_proposals="aes128gcm16-prfsha256-x25519")
    first = _up(p)
    assert _responder_sa(p).proposal_text == "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
    p.b.configs[:] = [dataclasses.replace(p.b.configs[0], proposals="aes256gcm16-prfsha384-x25519")]
    p.a.terminate(first, p.now)
    p.pump()
    assert not [s for s in p.b.ike_sas() if s.state is IkeState.ESTABLISHED]
    _up(p)
    assert _responder_sa(p).proposal_text == "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519"
    assert _responder_sa(p).prf.prf_id == PrfId.HMAC_SHA2_384


def test_each_ike_sa_has_its_own_chosen_proposal() -> None:
    """Two responders negotiating the same offer get equal but separate proposals: changing one SA's
    (as a rekey may) changes neither the other's nor what the next IKE_SA_INIT negotiates."""
    p1, p2 = make_pair(seed=1), make_pair(seed=2)
    _up(p1)
    _up(p2)
    sa1, sa2 = _responder_sa(p1), _responder_sa(p2)
    assert sa1.proposal == sa2.proposal and sa1.proposal is not sa2.proposal
    assert sa1.proposal.transforms is not sa2.proposal.transforms
    sa1.proposal.transforms.clear()
    assert sa2.proposal.first(TransformType.ENCR) is not None
    p3 = make_pair(seed=3)
    _up(p3)
    assert _responder_sa(p3).proposal == sa2.proposal
    assert _responder_sa(p3).spi_r != sa2.spi_r and _responder_sa(p3).sk_d != sa2.sk_d


def test_negotiation_outcomes_are_the_selection_and_bounded() -> None:
    ours = parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)
    ike_init._NEGOTIATED.clear()
    got = ike_init.negotiate(ours, parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE), 31)
    assert got.chosen is not None and got.group == 31 and got.suite is not None
    assert got.text == "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
    # no acceptable proposal is an outcome too, and is answered as such every time
    none = ike_init.negotiate(ours, parse_proposals("aes256-sha256-modp2048", ProtocolId.IKE), 14)
    assert none.chosen is None
    assert ike_init.negotiate(ours, parse_proposals("aes256-sha256-modp2048", ProtocolId.IKE), 14).chosen is None
    # the KE group is part of the key: a preferred group changes the choice (RFC 7296 1.2)
    two = parse_proposals("aes128gcm16-prfsha256-x25519-ecp256", ProtocolId.IKE)
    ours2 = parse_proposals("aes128gcm16-prfsha256-x25519-ecp256", ProtocolId.IKE)
    assert ike_init.negotiate(ours2, two, 19).group == 19
    assert ike_init.negotiate(ours2, two, 31).group == 31
    for i in range(ike_init.NEGOTIATED_MAX + 10):  # a flood of varied offers only empties it
        offered = parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)
        offered[0].num = i + 1
        ike_init.negotiate(ours, offered, 31)
    assert len(ike_init._NEGOTIATED) <= ike_init.NEGOTIATED_MAX


def _ca(name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return key, subject, _ca_and_cert(name, key, subject, key)


def test_certreq_hashes_follow_the_trusted_cas() -> None:
    from core_ike.crypto.auth import spki_sha1

    c = Credentials()
    assert c.certreq_hashes() == b""
    _, _, ca0 = _ca("CA 0")
    _, _, ca1 = _ca("CA 1")
    c.cas.append(ca0)
    assert c.certreq_hashes() == spki_sha1(ca0.public_key())
    c.cas.append(ca1)  # a CA added to the same store: recomputed
    assert c.certreq_hashes() == spki_sha1(ca0.public_key()) + spki_sha1(ca1.public_key())
    c.cas[:] = [ca1]
    assert c.certreq_hashes() == spki_sha1(ca1.public_key())
    # a reload builds a new store: nothing is shared between stores
    assert Credentials(cas=[ca0]).certreq_hashes() == spki_sha1(ca0.public_key())


def test_verify_cert_checks_the_issuer_and_its_signature() -> None:
    import time

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k0, n0, ca0 = _ca("CA 0")
    k1, n1, ca1 = _ca("CA 1")
    ee = ec.generate_private_key(ec.SECP256R1())
    c = Credentials(cas=[ca0])
    wall = time.time()
    c.verify_cert(_ca_and_cert("alice@test", k0, n0, ee), wall)
    with pytest.raises(AuthenticationFailed, match="no trusted issuer"):
        c.verify_cert(_ca_and_cert("alice@test", k1, n1, ee), wall)  # another issuer
    impostor_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA 0")])
    with pytest.raises(AuthenticationFailed, match="no trusted issuer"):
        c.verify_cert(_ca_and_cert("alice@test", k1, impostor_name, ee), wall)  # CA 0's name, CA 1's key
    c.cas.append(ca1)
    c.verify_cert(_ca_and_cert("alice@test", k1, n1, ee), wall)


def test_own_certificate_der_is_the_certificate() -> None:
    from cryptography.hazmat.primitives import serialization

    k0, n0, ca0 = _ca("CA 0")
    _, _, ca1 = _ca("CA 1")
    for cert in (ca0, ca1, ca0):
        assert ike_auth._der(cert) == cert.public_bytes(serialization.Encoding.DER)
    ike_auth._DER.clear()
    for i in range(ike_auth.DER_CACHE_MAX + 3):
        ike_auth._der(_ca_and_cert(f"n{i}@test", k0, n0, k0))
    assert len(ike_auth._DER) <= ike_auth.DER_CACHE_MAX


@pytest.mark.parametrize("rsa_pss", [False, True])
def test_signatures_with_kept_algorithm_identifiers_verify(rsa_pss: bool) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    octets = b"signed octets" * 20
    for _ in range(2):  # the second time from the caches
        method, data = auth_mod.create_signature_auth(key, 14, octets, {2}, rsa_pss=rsa_pss)
        assert method == 14
        assert auth_mod.verify_signature_auth(key.public_key(), 14, data, octets)
        assert not auth_mod.verify_signature_auth(key.public_key(), 14, data, octets + b"x")
    # a malformed AlgorithmIdentifier fails every time, also once kept
    bad = bytes((3,)) + b"\x30\x01\x00" + data[1 + data[0]:]
    assert not auth_mod.verify_signature_auth(key.public_key(), 14, bad, octets)
    assert not auth_mod.verify_signature_auth(key.public_key(), 14, bad, octets)
    auth_mod._PARSED_ALGIDS.clear()
    for i in range(auth_mod.ALGID_CACHE_MAX + 5):
        auth_mod._parsed_algid(b"\x30\x03\x06\x01" + bytes((i % 256,)) + bytes(i // 256))
    assert len(auth_mod._PARSED_ALGIDS) <= auth_mod.ALGID_CACHE_MAX


@pytest.mark.parametrize("prf_id", [PrfId.HMAC_SHA1, PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_512, PrfId.AES128_CMAC])
def test_prf_plus_is_rfc7296_2_13(prf_id: int) -> None:
    prf = prf_for(prf_id)
    assert prf_for(prf_id) is prf and isinstance(prf, Prf)
    key, seed = b"k" * prf.key_size, b"seed octets" * 7
    want, t = b"", b""
    for n in range(1, 12):  # T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)
        t = prf(key, t + seed + bytes((n,)))
        want += t
    for length in (1, prf.output_size, prf.output_size + 1, 136, len(want)):
        assert prf_plus(prf, key, seed, length) == want[:length]
    if prf_id != PrfId.AES128_CMAC:
        assert prf(key, seed) == hmac.digest(key, seed, prf._digest)


def _init_with(*extra) -> bytes:  # type: ignore[no-untyped-def]
    msg = Message(b"\x11" * 8, b"\x22" * 8, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                  [SaPayload(parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)),
                   KePayload(31, b"\x01" * 32), NoncePayload(b"\x02" * 32), *extra])
    return encode_message(msg)[0]


def test_identification_payloads_decode_as_the_general_path() -> None:
    from core_ike.buffer import Buffer
    from core_ike.codec import wire

    ids = [IdPayload(PayloadType.IDi, IdType.FQDN, b"alice.test"),
           IdPayload(PayloadType.IDr, IdType.IPV4_ADDR, b"\xc0\x00\x02\x01"),
           IdPayload(PayloadType.IDi, IdType.DER_ASN1_DN, b"\x30\x00")]
    for idp in ids:
        got = decode_message(_init_with(idp)).get(idp.ptype)
        assert isinstance(got, IdPayload)
        general = wire.pull_id(Buffer(idp.body), idp.ptype)
        assert (got.ptype, got.id_type, got.data, got.body) == (general.ptype, general.id_type, general.data,
                                                                 general.body)
    # an address of the wrong length: the general path's error
    with pytest.raises(DecodeError, match="ID type 1"):
        decode_message(_init_with(IdPayload(PayloadType.IDi, IdType.IPV4_ADDR, b"\xc0\x00\x02")))


def test_sa_bodies_from_the_cache_are_push_sa() -> None:
    from core_ike.buffer import Buffer
    from core_ike.codec import sawire

    def general(sa: SaPayload) -> bytes:
        buf = Buffer()
        sawire.push_sa(buf, sa)
        return buf.getvalue()

    sawire._SA_BODIES.clear()
    offers = [parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE),
              parse_proposals("aes256-sha256-modp2048,aes128gcm16-prfsha256-ecp256", ProtocolId.IKE),
              parse_proposals("aes128gcm16", ProtocolId.ESP)]
    offers[2][0].spi = b"\x01\x02\x03\x04"
    bodies = []
    for props in offers * 2:  # the second time from the cache
        sa = SaPayload(props)
        body = sawire._fast_push_sa(sa)
        assert body == general(sa)
        bodies.append(body)
    assert len(set(bodies)) == 3
    # another SPI (a CHILD_SA's, RFC 7296 3.3.1) is another body
    offers[2][0].spi = b"\x05\x06\x07\x08"
    assert sawire._fast_push_sa(SaPayload(offers[2])) == general(SaPayload(offers[2])) != bodies[2]
    for i in range(sawire.SA_CACHE_MAX + 5):
        offers[2][0].spi = i.to_bytes(4, "big")
        sawire._fast_push_sa(SaPayload(offers[2]))
    assert len(sawire._SA_BODIES) <= sawire.SA_CACHE_MAX


def test_a_dn_identity_matches_the_certificate_subject_as_signed() -> None:
    """RFC 4945 3.1.5: an ID_DER_ASN1_DN matches the subject exactly; read from the certificate's octets
    (crypto/sigalg.py certificate_subject, read with the rest of CertificateParts in one walk), with the parsed
    subject's encoding as the fallback."""
    from cryptography.hazmat.primitives import serialization

    from core_ike.crypto.sigalg import certificate_subject
    from core_ike.ike.identity import Identity

    k0, n0, ca0 = _ca("CA 0")
    ee = _ca_and_cert("alice@test", k0, n0, k0)
    for cert in (ca0, ee):
        der = cert.public_bytes(serialization.Encoding.DER)
        assert certificate_subject(der) == cert.subject.public_bytes()
        for cut in (0, 1, 2, 10, 60, len(der) - 1):
            assert certificate_subject(der[:cut]) is None
    assert certificate_subject(b"\x04\x00") is None  # not a SEQUENCE
    der = ee.public_bytes(serialization.Encoding.DER)
    mine = Identity(IdType.DER_ASN1_DN, ee.subject.public_bytes())
    other = Identity(IdType.DER_ASN1_DN, ca0.subject.public_bytes())
    subject = certificate_subject(der)
    assert cert_holds(ee, mine, subject) and cert_holds(ee, mine)
    assert not cert_holds(ee, other, subject) and not cert_holds(ee, other)
    assert cert_holds(ee, mine, b"\x30\x00")  # other octets than the subject's: the parsed subject decides
