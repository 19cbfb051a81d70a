"""EAP codec (RFC 3748 4), MD4 (RFC 1320 A.5), MS-CHAPv2 (RFC 2759 9.2, RFC 3079 3.5.3) and the
peer/server machines against each other."""

from __future__ import annotations

import pytest

from core_ike.eap import mschapv2 as ms
from core_ike.eap.md4 import md4
from core_ike.eap.methods import EapFailed, EapPeer, EapServer
from core_ike.eap.packet import EapCode, EapPacket, EapType
from core_ike.errors import DecodeError
from core_ike.rng import SeededRng


@pytest.mark.parametrize("data,digest", [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
])
def test_md4_rfc1320_vectors(data: bytes, digest: str) -> None:
    assert md4(data).hex() == digest


# RFC 2759 9.2
USER, PASSWORD = b"User", "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")


def test_mschapv2_rfc2759_vectors() -> None:
    assert ms.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == bytes.fromhex("D02E4386BCE91226")
    assert ms.nt_password_hash(PASSWORD) == bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
    assert md4(ms.nt_password_hash(PASSWORD)) == bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
    assert ms.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD) == NT_RESPONSE
    assert ms.authenticator_response(PASSWORD, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER) == \
        b"S=407A5589115FD0D6209F510FE9C04566932CDA56"


def test_mppe_keys_rfc3079_vectors() -> None:
    mk = ms.master_key(PASSWORD, NT_RESPONSE)
    assert mk == bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
    # RFC 3079 3.5.3: the server's 128-bit send start key, which is the client's receive key
    server_send = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
    assert ms.asymmetric_start_key(mk, True, True) == server_send
    assert ms.asymmetric_start_key(mk, False, False) == server_send
    assert ms.asymmetric_start_key(mk, True, False) == ms.asymmetric_start_key(mk, False, True) != server_send
    assert ms.msk(PASSWORD, NT_RESPONSE) == ms.asymmetric_start_key(mk, True, False) + server_send


def test_packet_roundtrip_and_bad_input() -> None:
    p = EapPacket(EapCode.REQUEST, 7, EapType.IDENTITY, b"")
    assert EapPacket.decode(p.encode()) == p
    s = EapPacket(EapCode.SUCCESS, 9)
    assert s.encode() == b"\x03\x09\x00\x04" and EapPacket.decode(s.encode()) == s
    assert EapPacket.decode(p.encode() + b"pad") == p  # RFC 3748 4: octets beyond Length are padding
    for bad in (b"", b"\x01\x01\x00", b"\x01\x01\x00\x09\x01", b"\x07\x01\x00\x04", b"\x01\x01\x00\x04"):
        with pytest.raises(DecodeError):
            EapPacket.decode(bad)


def _run(method: int, peer_pw: bytes, server_pw: bytes | None, peer_method: int | None = None) -> \
        tuple[EapPeer, EapServer]:
    peer = EapPeer(peer_method or method, b"carol", peer_pw, SeededRng(1))
    server = EapServer(method, lambda u: server_pw if u == b"carol" else None, SeededRng(2))
    req: EapPacket | None = server.start()
    while req is not None:
        resp = peer.process(EapPacket.decode(req.encode()))
        if resp is None:
            break
        req = server.process(EapPacket.decode(resp.encode()))
    return peer, server


@pytest.mark.parametrize("method", [EapType.MD5, EapType.MSCHAPV2])
def test_methods_succeed(method: int) -> None:
    peer, server = _run(method, b"secret", b"secret")
    assert peer.succeeded and server.succeeded and server.peer_identity == b"carol"
    if method == EapType.MSCHAPV2:
        assert peer.msk is not None and len(peer.msk) == 32 and peer.msk == server.msk
    else:
        assert peer.msk is None and server.msk is None  # EAP-MD5 generates no key


@pytest.mark.parametrize("method", [EapType.MD5, EapType.MSCHAPV2])
def test_wrong_password(method: int) -> None:
    with pytest.raises(EapFailed, match="wrong password"):
        _run(method, b"guess", b"secret")


@pytest.mark.parametrize("method", [EapType.MD5, EapType.MSCHAPV2])
def test_success_and_failure_carry_the_identifier_of_the_response(method: int) -> None:
    """RFC 3748 4.2: the Identifier of Success/Failure matches the Response it answers."""
    for pw, ok in ((b"secret", True), (b"guess", False)):
        peer = EapPeer(method, b"carol", pw, SeededRng(1))
        server = EapServer(method, lambda u: b"secret", SeededRng(2))
        req = server.start()
        while True:
            resp = peer.process(req)
            assert resp is not None
            try:
                req = server.process(resp)
            except EapFailed:
                fail = server.failure()
                assert not ok and fail == EapPacket(EapCode.FAILURE, resp.identifier) and server.msk is None
                break
            if req.code == EapCode.SUCCESS:
                assert ok and req.identifier == resp.identifier
                break


def test_unknown_user() -> None:
    with pytest.raises(EapFailed, match="no EAP secret found for 'carol'"):
        _run(EapType.MD5, b"secret", None)


def test_nak_names_the_peers_method() -> None:
    with pytest.raises(EapFailed, match=r"refused EAP-MD5 \(EAP-Nak, it proposes EAP-MSCHAPv2\)"):
        _run(EapType.MD5, b"secret", b"secret", peer_method=EapType.MSCHAPV2)


def test_peer_refuses_premature_success_and_reports_failure() -> None:
    peer = EapPeer(EapType.MSCHAPV2, b"carol", b"pw", SeededRng(1))
    with pytest.raises(EapFailed, match="before EAP-MSCHAPv2 completed"):
        peer.process(EapPacket(EapCode.SUCCESS, 1))
    with pytest.raises(EapFailed, match="sent EAP-Failure before EAP-MSCHAPv2 started: it does not accept the "
                                        "EAP identity 'carol'"):
        peer.process(EapPacket(EapCode.FAILURE, 1))


def test_peer_rejects_forged_mschapv2_authenticator() -> None:
    peer = EapPeer(EapType.MSCHAPV2, b"carol", b"pw", SeededRng(1))
    server = EapServer(EapType.MSCHAPV2, lambda u: b"other", SeededRng(2), identity=b"carol")
    resp = peer.process(server.start())
    assert resp is not None
    # a server that does not know the password cannot produce the authenticator response (RFC 2759 5)
    forged = EapPacket(EapCode.REQUEST, resp.identifier + 1, EapType.MSCHAPV2,
                       b"\x03\x01\x00\x2e" + b"S=" + b"0" * 40)
    with pytest.raises(EapFailed, match="authenticator response invalid"):
        peer.process(forged)


def test_mschapv2_failure_text_is_reported() -> None:
    peer = EapPeer(EapType.MSCHAPV2, b"carol", b"pw", SeededRng(1))
    server = EapServer(EapType.MSCHAPV2, lambda u: b"pw", SeededRng(2), identity=b"carol")
    resp = peer.process(server.start())
    assert resp is not None
    body = b"E=691 R=0 C=00000000000000000000000000000000 V=3 M=FAILED"
    fail = EapPacket(EapCode.REQUEST, 5, EapType.MSCHAPV2, bytes([4, 1]) + (4 + len(body)).to_bytes(2, "big") + body)
    ack = peer.process(fail)
    assert ack is not None and ack.data == b"\x04"
    with pytest.raises(EapFailed, match="rejected our credentials for 'carol': E=691 authentication failure "
                                        r"\(wrong password\), FAILED"):
        peer.process(EapPacket(EapCode.FAILURE, 6))


# -- EAP-MSCHAPv2 retries (RFC 2759 6, draft-kamath-pppext-eap-mschapv2 2.5/2.6) ------------------------

class ScriptedRng:
    """Hands out the given octet strings in order (each request's size must match)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def bytes(self, n: int) -> bytes:
        out = self.chunks.pop(0)
        assert len(out) == n
        return out


FIRST_CHALLENGE = bytes(range(16))


def _ms(pkt: EapPacket) -> tuple[int, int, bytes]:
    assert pkt.code == EapCode.REQUEST and pkt.type == EapType.MSCHAPV2
    return pkt.data[0], pkt.data[1], pkt.data[4:]


def _response(req: EapPacket, auth_challenge: bytes, password: str, peer_challenge: bytes = PEER_CHALLENGE,
              name: bytes = USER) -> EapPacket:
    """The peer's Response (draft-kamath 2.2) to `req`, answering `auth_challenge`."""
    nt = ms.generate_nt_response(auth_challenge, peer_challenge, name, password)
    value = peer_challenge + bytes(8) + nt + b"\x00"
    body = bytes([49]) + value + name
    return EapPacket(EapCode.RESPONSE, req.identifier, EapType.MSCHAPV2,
                     bytes([2, req.data[1]]) + (4 + len(body)).to_bytes(2, "big") + body)


def _vector_server(retries: int = 2, secret: bytes | None = PASSWORD.encode()) -> tuple[EapServer, EapPacket]:
    """A server for the RFC 2759 9.2 user whose first challenge is FIRST_CHALLENGE and whose retry
    challenge is the RFC's Authenticator Challenge."""
    rng = ScriptedRng(b"\x10", FIRST_CHALLENGE, b"\x40", AUTH_CHALLENGE, bytes(16), bytes(16))
    server = EapServer(EapType.MSCHAPV2, lambda u: secret if u == USER else None, rng, identity=USER,
                       retries=retries)
    return server, server.start()


def test_mschapv2_retry_with_rfc2759_vectors() -> None:
    """A wrong password gets a Failure Request with R=1 and a new challenge; the Response to that
    challenge (the RFC 2759 9.2 values) succeeds, with the RFC's authenticator response and the MSK
    of RFC 3079 3.5.3."""
    server, challenge = _vector_server()
    assert _ms(challenge)[:2] == (1, 0x40) and challenge.identifier == 0x11
    fail = server.process(_response(challenge, FIRST_CHALLENGE, "wrong password"))
    opcode, ms_id, text = _ms(fail)
    assert (opcode, ms_id, fail.identifier) == (4, 0x40, 0x12)
    assert text == b"E=691 R=1 C=5B5D7C7D7B3F2F3E3C2C602132262628 V=3 M=authentication failed, 1 retry left"
    assert server.retried == 1 and not server.succeeded and server.msk is None
    success = server.process(_response(fail, AUTH_CHALLENGE, PASSWORD))
    opcode, ms_id, text = _ms(success)
    assert (opcode, ms_id) == (3, 0x41)  # the retry's exchange has the next MS-CHAPv2-ID
    assert text == b"S=407A5589115FD0D6209F510FE9C04566932CDA56 M=welcome"
    assert server.msk == ms.msk(PASSWORD, NT_RESPONSE)
    assert server.msk[16:] == bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")  # RFC 3079 3.5.3
    done = server.process(EapPacket(EapCode.RESPONSE, success.identifier, EapType.MSCHAPV2, b"\x03"))
    assert done == EapPacket(EapCode.SUCCESS, success.identifier) and server.succeeded


def test_mschapv2_retry_answers_only_the_new_challenge() -> None:
    """After a Failure Request the old challenge is void: the right password computed over it fails."""
    server, challenge = _vector_server()
    fail = server.process(_response(challenge, FIRST_CHALLENGE, "wrong password"))
    again = server.process(_response(fail, FIRST_CHALLENGE, PASSWORD))
    assert _ms(again)[0] == 4 and server.retried == 2 and server.msk is None


def test_mschapv2_retries_run_out() -> None:
    server, req = _vector_server()
    texts = []
    challenge = FIRST_CHALLENGE
    for _ in range(2):
        req = server.process(_response(req, challenge, "guess"))
        texts.append(_ms(req)[2])
        challenge = bytes.fromhex(texts[-1][12:44].decode())  # C= of the Failure Request
    assert texts[0].endswith(b"1 retry left") and texts[1].endswith(b"0 retries left")
    assert texts[0][12:44] != texts[1][12:44]  # each retry has its own challenge
    with pytest.raises(EapFailed, match=r"^EAP-MSCHAPv2 verification of 'User' failed: wrong password, no retry "
                                        r"left \(2 offered\)$"):
        server.process(_response(req, challenge, "guess"))
    assert server.failure() == EapPacket(EapCode.FAILURE, req.identifier)


def test_mschapv2_without_retries_fails_at_once() -> None:
    server, challenge = _vector_server(retries=0)
    with pytest.raises(EapFailed, match=r"wrong password \(no retries configured\)$"):
        server.process(_response(challenge, FIRST_CHALLENGE, "guess"))
    with pytest.raises(ValueError, match="0-16"):
        EapServer(EapType.MSCHAPV2, lambda u: None, SeededRng(1), retries=17)


def test_mschapv2_unknown_user_looks_like_a_wrong_password() -> None:
    """The peer cannot tell an unknown EAP identity from a wrong password (the same Failure Request);
    the log and the final reason say which it was."""
    known, c1 = _vector_server()
    unknown, c2 = _vector_server(secret=None)
    f1 = known.process(_response(c1, FIRST_CHALLENGE, "guess"))
    f2 = unknown.process(_response(c2, FIRST_CHALLENGE, "guess"))
    assert f1 == f2
    f3 = unknown.process(_response(f2, AUTH_CHALLENGE, PASSWORD))
    with pytest.raises(EapFailed, match=r"^no EAP secret found for 'User', no retry left \(2 offered\)$"):
        unknown.process(_response(f3, bytes(16), PASSWORD))


def test_mschapv2_peer_declines_the_retry() -> None:
    """Our peer (a configured password) answers R=1 with a Failure Response (draft-kamath 2.6); the
    server then ends with EAP-Failure and says the peer did not retry."""
    peer = EapPeer(EapType.MSCHAPV2, USER, b"guess", SeededRng(1))
    server, challenge = _vector_server()
    resp = peer.process(challenge)
    assert resp is not None
    fail = server.process(resp)
    ack = peer.process(fail)
    assert ack == EapPacket(EapCode.RESPONSE, fail.identifier, EapType.MSCHAPV2, b"\x04")
    with pytest.raises(EapFailed, match=r"wrong password; the peer did not retry \(1 of 2 retries offered\)$"):
        server.process(ack)
    with pytest.raises(EapFailed, match=r"rejected our credentials for 'User': E=691 authentication failure "
                                        r"\(wrong password\), authentication failed, 1 retry left; not retried: "
                                        r"our password is configured$"):
        peer.process(server.failure())
