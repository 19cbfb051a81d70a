"""IKE engine driven in memory: two engines, a fake clock, no sockets."""

from __future__ import annotations

import pytest
from ike_pair import make_pair

from core_ike.constants import NotifyType
from core_ike.ike import events as ev
from core_ike.ike.engine import EngineConfig
from core_ike.ike.sa import IkeState


def _up(p, name="home"):  # type: ignore[no-untyped-def]
    sa = p.a.initiate(name, now=p.now)
    p.pump()
    return sa


@pytest.mark.parametrize("proposals,esp", [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("aes128-sha1-ecp256", "aes128-sha1"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384"),
    ("aes192-sha512-modp3072", "aes192-sha512"),
    ("aes256-sha384-ecp521", "aes256-sha384-modp3072"),
])
@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_establish_ike_and_child(proposals: str, esp: str, auth: str) -> None:
    p = make_pair(proposals, esp, auth)
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    (ike_a,) = p.of("a", ev.IkeSaEstablished)
    (ike_b,) = p.of("b", ev.IkeSaEstablished)
    assert ike_a.spi_i == ike_b.spi_i and ike_a.spi_r == ike_b.spi_r
    (ca,) = p.of("a", ev.ChildSaEstablished)
    (cb,) = p.of("b", ev.ChildSaEstablished)
    # the two ends agree on SPIs and keys, crosswise
    assert ca.keys.spi_in == cb.keys.spi_out and ca.keys.spi_out == cb.keys.spi_in
    assert ca.keys.key_out == cb.keys.key_in and ca.keys.key_in == cb.keys.key_out
    assert ca.keys.integ_out == cb.keys.integ_in
    assert ca.local_ts == ("10.1.0.0/24",) and ca.remote_ts == ("10.2.0.0/24",)
    assert cb.local_ts == ("10.2.0.0/24",) and cb.remote_ts == ("10.1.0.0/24",)
    assert ca.proposal == cb.proposal


def test_wrong_psk_fails_with_reason() -> None:
    p = make_pair()
    p.b.creds.shared.clear()
    p.b.creds.add_psk("another-secret-entirely", "alice@test", "bob@test")
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert "AUTHENTICATION_FAILED" in fa.reason
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "pre-shared key failed" in fb.reason
    assert not p.a.sas and not p.b.sas


def test_no_proposal_chosen() -> None:
    p = make_pair("aes128gcm16-prfsha256-x25519", b_proposals="aes256-sha512-modp3072")
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_invalid_ke_retry() -> None:
    p = make_pair("aes128gcm16-prfsha256-x25519-ecp256", b_proposals="aes128gcm16-prfsha256-ecp256")
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    assert "ECP_256" in sa.proposal_text


def test_cookie_round() -> None:
    p = make_pair(engine_b=EngineConfig(force_cookies=True))
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    first_two = [d for s, d in p.wire if s == "a->b"][:2]
    # RFC 7296 2.6: the retried request starts with N(COOKIE)
    assert first_two[1][16] == 41 and first_two[0][16] == 33


def test_retransmission_then_success() -> None:
    lost = {"n": 0}

    def drop(side: str, data: bytes) -> bool:
        if side == "a->b" and lost["n"] < 2:
            lost["n"] += 1
            return True
        return False

    p = make_pair()
    p.drop = drop
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.CONNECTING
    p.advance(4.0 + 7.2 + 0.1)
    assert sa.state is IkeState.ESTABLISHED


def test_peer_unreachable_reports() -> None:
    p = make_pair()
    p.drop = lambda side, data: True
    p.a.initiate("home", now=p.now)
    p.pump()
    p.advance(200)
    (f,) = p.of("a", ev.IkeSaFailed)
    assert "unreachable" in f.reason
    assert not p.a.sas


def test_duplicate_request_answered_from_cache() -> None:
    p = make_pair()
    _up(p)
    last_b = [d for s, d in p.wire if s == "b->a"][-1]
    last_a = [d for s, d in p.wire if s == "a->b"][-1]
    p.b.receive(last_a, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    out = p.b.datagrams_to_send()
    assert [d for d, _, _ in out] == [last_b]


def test_bad_icv_dropped() -> None:
    p = make_pair()
    sa = _up(p)
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    (pkt, local, remote), = p.a.datagrams_to_send()
    bad = pkt[:-1] + bytes([pkt[-1] ^ 1])
    p.b.receive(bad, remote, local, p.now)
    assert p.b.datagrams_to_send() == []
    p.b.receive(pkt, remote, local, p.now)  # the genuine one still works
    assert len(p.b.datagrams_to_send()) == 1


def test_child_rekey_both_directions() -> None:
    for side in ("a", "b"):
        p = make_pair(esp="aes128gcm16-x25519")
        _up(p)
        eng = p.engine(side)
        sa = eng.ike_sas()[0]
        old = next(iter(sa.children.values()))
        eng.rekey_child(sa, old.unique_id, now=p.now)
        p.pump()
        new_a = p.of("a", ev.ChildSaEstablished)
        new_b = p.of("b", ev.ChildSaEstablished)
        assert len(new_a) == 2 and len(new_b) == 2
        assert new_a[1].rekeyed_from is not None and new_b[1].rekeyed_from is not None
        assert new_a[1].keys.key_out == new_b[1].keys.key_in
        assert len(p.of("a", ev.ChildSaDeleted)) == 1 and len(p.of("b", ev.ChildSaDeleted)) == 1
        assert len(sa.children) == 1


def test_ike_rekey_both_directions() -> None:
    for side in ("a", "b"):
        p = make_pair()
        _up(p)
        eng = p.engine(side)
        sa = eng.ike_sas()[0]
        eng.rekey_ike(sa, now=p.now)
        p.pump()
        assert len(p.of("a", ev.IkeSaEstablished)) == 2
        assert len(p.of("b", ev.IkeSaEstablished)) == 2
        na, nb = p.a.ike_sas(), p.b.ike_sas()
        assert len(na) == 1 and len(nb) == 1
        assert na[0].spi_i == nb[0].spi_i and na[0].spi_r == nb[0].spi_r
        assert len(na[0].children) == 1 and len(nb[0].children) == 1
        # the new SA works: rekey a child through it
        c = next(iter(na[0].children))
        p.a.rekey_child(na[0], c, now=p.now)
        p.pump()
        assert len(p.of("b", ev.ChildSaEstablished)) == 2


def test_delete_from_each_side() -> None:
    for side in ("a", "b"):
        p = make_pair()
        _up(p)
        eng = p.engine(side)
        eng.terminate(eng.ike_sas()[0], now=p.now)
        p.pump()
        assert not p.a.sas and not p.b.sas
        assert len(p.of("a", ev.IkeSaDeleted)) == 1 and len(p.of("b", ev.IkeSaDeleted)) == 1
        assert len(p.of("a", ev.ChildSaDeleted)) == 1


def test_dpd_detects_dead_peer() -> None:
    p = make_pair(a_conf={"dpd_delay": 10.0})
    sa = _up(p)
    p.advance(5)
    assert sa.state is IkeState.ESTABLISHED
    p.drop = lambda side, data: True
    p.advance(300)
    assert sa.state is IkeState.DESTROYED
    (d,) = p.of("a", ev.IkeSaDeleted)
    assert "not responding" in d.reason


def test_fragmentation_with_large_certificates() -> None:
    p = make_pair(auth="pubkey", a_conf={"fragment_size": 300}, b_conf={"fragment_size": 300})
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    sizes = [len(d) for s, d in p.wire]
    assert max(sizes) <= 300 + 4


def test_ts_narrowing() -> None:
    p = make_pair()
    p.b.configs[0].children[0].remote_ts = ["10.1.0.0/25"]
    _up(p)
    (ca,) = p.of("a", ev.ChildSaEstablished)
    assert ca.local_ts == ("10.1.0.0/25",)


def test_ts_unacceptable_keeps_ike_sa() -> None:
    p = make_pair()
    p.b.configs[0].children[0].remote_ts = ["172.16.0.0/24"]
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    (f,) = p.of("a", ev.ChildSaFailed)
    assert "TS_UNACCEPTABLE" in f.reason


def test_dynamic_ts_between_two_natted_peers() -> None:
    """Both peers behind NATs with `dynamic` selectors (the portal's empty subnets): each side's TS is
    its own inner address, although the other sees only its NAT's address."""
    from ike_pair import A_IP, B_IP

    p = make_pair()
    p.a.configs[0].remote_addrs = ["203.0.113.2"]
    p.nat = {A_IP: "203.0.113.1", B_IP: "203.0.113.2"}
    for eng in (p.a, p.b):
        eng.configs[0].children[0].local_ts = ["dynamic"]
        eng.configs[0].children[0].remote_ts = ["dynamic"]
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED and sa.nat_here and sa.nat_there
    (ca,) = p.of("a", ev.ChildSaEstablished)
    (cb,) = p.of("b", ev.ChildSaEstablished)
    assert (ca.local_ts, ca.remote_ts) == ((f"{A_IP}/32",), (f"{B_IP}/32",))
    assert (cb.local_ts, cb.remote_ts) == ((f"{B_IP}/32",), (f"{A_IP}/32",))


def test_dynamic_ts_behind_nat_refuses_a_subnet() -> None:
    """`dynamic` for a peer behind a NAT accepts only one host address, never the peer's subnet."""
    from ike_pair import A_IP, B_IP

    p = make_pair()
    p.a.configs[0].remote_addrs = ["203.0.113.2"]
    p.nat = {A_IP: "203.0.113.1", B_IP: "203.0.113.2"}
    p.b.configs[0].children[0].remote_ts = ["dynamic"]  # a offers 10.1.0.0/24 as its side
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    (f,) = p.of("a", ev.ChildSaFailed)
    assert "TS_UNACCEPTABLE" in f.reason
    assert not p.of("b", ev.ChildSaEstablished)


def test_forced_encapsulation_starts_on_500_then_floats() -> None:
    p = make_pair(a_conf={"encap": True})
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    first = p.a.datagrams_to_send()  # nothing pending
    assert first == []
    assert p.wire[0][1][:4] != b"\x00\x00\x00\x00"  # IKE_SA_INIT without marker, i.e. on port 500
    assert sa.local[1] == 4500 and sa.remote[1] == 4500
    (ca,) = p.of("a", ev.ChildSaEstablished)
    (cb,) = p.of("b", ev.ChildSaEstablished)
    assert ca.encap and cb.encap
    # the responder was made to see a NAT in front of the initiator (fake NAT-D source hash)
    assert p.b.ike_sas()[0].nat_there and not sa.nat_there


def _ca_and_cert(name: str, ca_key, ca_name, ee_key):  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))


def test_x509_certificates_with_fragmentation() -> None:
    """IKE_AUTH with X.509 end-entity certificates issued by a trusted CA (RFC 7296 3.6, 3.7), sent in
    fragments (RFC 7383) because a certificate-sized message exceeds the fragment size."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from core_ike.ike.config import AuthConfig
    from core_ike.ike.identity import Identity

    ca_key = rsa.generate_private_key(65537, 2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = _ca_and_cert("Test CA", ca_key, ca_name, ca_key)
    p = make_pair(auth="pubkey", a_conf={"fragment_size": 600}, b_conf={"fragment_size": 600})
    for eng, me, peer in ((p.a, "alice@test", "bob@test"), (p.b, "bob@test", "alice@test")):
        key = eng.creds.private_keys[0]
        cert = _ca_and_cert(me, ca_key, ca_name, key)
        eng.creds.raw_keys.clear()  # trust only the CA now
        eng.creds.cas.append(ca)
        cfg = eng.configs[0]
        cfg.local = AuthConfig("pubkey", Identity.parse(me), certs=[cert])
        cfg.remote = AuthConfig("pubkey", Identity.parse(peer))
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED, p.of("a", ev.IkeSaFailed)
    assert str(sa.peer_id) == "bob@test"
    assert max(len(d) for _, d in p.wire) <= 600 + 4
    assert sum(1 for s, d in p.wire if s == "a->b") > 3  # IKE_AUTH went in several fragments


def test_untrusted_certificate_rejected() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from core_ike.ike.config import AuthConfig
    from core_ike.ike.identity import Identity

    rogue_key = rsa.generate_private_key(65537, 2048)
    rogue = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
    p = make_pair(auth="pubkey")
    key = p.a.creds.private_keys[0]
    p.a.configs[0].local = AuthConfig("pubkey", Identity.parse("alice@test"),
                                      certs=[_ca_and_cert("alice@test", rogue_key, rogue, key)])
    p.b.configs[0].remote = AuthConfig("pubkey", Identity.parse("alice@test"))
    p.b.creds.raw_keys.clear()
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "no trusted issuer" in fb.reason


def test_virtual_ip_via_configuration_payload() -> None:
    """RFC 7296 2.19: the initiator asks for an address (CFG_REQUEST), the responder assigns one
    from its pool and the CHILD_SA's local selector becomes that address."""
    p = make_pair(a_conf={"vips": ["0.0.0.0"]}, b_conf={"pools": ["10.99.0.0/30"]})
    p.a.configs[0].children[0].local_ts = ["dynamic"]
    p.b.configs[0].children[0].remote_ts = ["dynamic"]
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    assert str(sa.vip) == "10.99.0.1"
    (ca,) = p.of("a", ev.ChildSaEstablished)
    (cb,) = p.of("b", ev.ChildSaEstablished)
    assert ca.local_ts == ("10.99.0.1/32",) and cb.remote_ts == ("10.99.0.1/32",)


def test_missing_own_credentials_fail_with_reason_on_both_sides() -> None:
    p = make_pair()
    p.a.creds.shared.clear()  # the initiator has no PSK: it cannot build its AUTH
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert "no shared key found" in fa.reason
    assert not p.a.sas
    p = make_pair()
    p.b.creds.shared.clear()  # the responder has none: the initiator is told AUTHENTICATION_FAILED
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "no shared key" in fb.reason or "pre-shared key failed" in fb.reason


def _cookies_sent(p) -> int:  # type: ignore[no-untyped-def]
    from core_ike.codec.message import decode_message

    n = 0
    for side, d in p.wire:
        if side == "b->a" and d[:4] != b"\x00\x00\x00\x00" and len(d) >= 28 and d[18] == 34:
            n += any(int(x.type) == NotifyType.COOKIE for x in decode_message(d).notifies())
    return n


@pytest.mark.parametrize("rotations,cookies", [(1, 1), (2, 2)])
def test_cookie_secret_rotation(rotations: int, cookies: int) -> None:
    """RFC 7296 2.6: a cookie made just before the secret changed is still accepted (previous secret);
    one two secrets old is not, the initiator simply gets a fresh COOKIE and goes on."""
    p = make_pair(engine_b=EngineConfig(force_cookies=True))
    sa = p.a.initiate("home", now=p.now)
    for data, local, remote in p.a.datagrams_to_send():  # IKE_SA_INIT without cookie -> N(COOKIE)
        p.wire.append(("a->b", data))
        p.b.receive(data, remote, local, p.now)
    for _ in range(rotations):
        p.b.rotate_cookie_secret()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    assert _cookies_sent(p) == cookies


def test_cookie_secret_rotates_by_itself() -> None:
    p = make_pair(engine_b=EngineConfig(force_cookies=True, cookie_secret_lifetime=60.0))
    _up(p)
    v0 = p.b.cookies.version
    p.now += 120
    sa2 = p.a.initiate("home", now=p.now, remote=("192.0.2.2", 500))
    p.pump()
    assert sa2.state is IkeState.ESTABLISHED and p.b.cookies.version == v0 + 1


def test_restarted_peer_answers_invalid_ike_spi_and_the_sa_closes_at_once() -> None:
    """RFC 7296 2.21.4: the restarted responder knows no IKE_SA, answers the DPD request with an
    unprotected INVALID_IKE_SPI; the initiator closes its SA at once, not after its retransmissions."""
    p = make_pair(a_conf={"dpd_delay": 10.0})
    sa = _up(p)
    assert sa.state is IkeState.ESTABLISHED
    fresh = make_pair()  # bob restarted: same address, no state
    p.b = fresh.b
    p.advance(10.5)  # alice's DPD goes out and is answered at once
    deleted = p.of("a", ev.IkeSaDeleted)
    assert len(deleted) == 1 and "INVALID_IKE_SPI" in deleted[0].reason
    assert sa.state is IkeState.DESTROYED and p.a.ike_sas() == []
    assert p.b.counters["invalid-spi-sent"] == 1
    assert sum(1 for side, _ in p.wire if side == "a->b") == sum(1 for side, _ in p.wire if side == "b->a")


def test_invalid_ike_spi_answers_are_rate_limited_and_unsolicited_ones_ignored() -> None:
    p = make_pair(a_kw={"invalid_spi_rate": 5.0})
    sa = _up(p)
    # a stray INVALID_IKE_SPI that answers nothing we sent does not close the SA
    from core_ike.codec.message import Message, encode_message
    from core_ike.codec.payloads import NotifyPayload
    from core_ike.constants import ExchangeType, HeaderFlag

    stray = Message(spi_i=sa.spi_i, spi_r=sa.spi_r, exchange=ExchangeType.INFORMATIONAL, flags=HeaderFlag.RESPONSE,
                    message_id=77, payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
    p.a.receive(encode_message(stray)[0], sa.local, sa.remote, p.now)
    assert sa.state is IkeState.ESTABLISHED
    # requests for unknown SPIs: at most invalid_spi_rate answers per second
    for i in range(20):
        req = Message(spi_i=bytes([i + 1]) * 8, spi_r=b"\x02" * 8, exchange=ExchangeType.INFORMATIONAL,
                      flags=HeaderFlag.INITIATOR, message_id=1, payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
        p.a.receive(encode_message(req)[0], sa.local, ("198.51.100.9", 500), p.now)
    assert p.a.counters["invalid-spi-sent"] == 5 and p.a.counters["invalid-spi-suppressed"] == 15


def test_virtual_ip_returns_to_the_pool_when_its_ike_sa_goes() -> None:
    """A pool of one address: the next client gets it once the first IKE_SA is deleted."""
    p = make_pair(a_conf={"vips": ["0.0.0.0"]}, b_conf={"pools": ["10.99.0.1/32"]})
    p.a.configs[0].children[0].local_ts = ["dynamic"]
    p.b.configs[0].children[0].remote_ts = ["dynamic"]
    sa = _up(p)
    assert str(sa.vip) == "10.99.0.1"
    p.a.terminate(sa, p.now)
    p.pump()
    assert p.b.ike_sas() == []
    again = _up(p)
    assert str(again.vip) == "10.99.0.1"
