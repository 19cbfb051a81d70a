"""IKE_AUTH with EAP (RFC 7296 2.16) between two in-memory engines on a fake clock: the responder
authenticates with its PSK or key, then EAP-Identity and the method, then AUTH with the MSK (or SK_p)."""

from __future__ import annotations

import logging

import pytest
from ike_pair import Pair, make_pair

from core_ike.constants import NotifyType
from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig
from core_ike.ike.identity import Identity
from core_ike.ike.sa import IkeState


def _eap_pair(method: str, auth: str = "psk", peer_pw: str = "carol-pw", server_pw: str | None = "carol-pw",
              peer_method: str | None = None, eap_id: str | None = None) -> Pair:
    p = make_pair(auth=auth)
    cfg_a, cfg_b = p.a.configs[0], p.b.configs[0]
    # a: road warrior, EAP peer; b: gateway with PSK/pubkey AUTH, EAP server
    cfg_a.local = AuthConfig(peer_method or method, Identity.parse("alice@test"), eap_id=eap_id)  # type: ignore[arg-type]
    cfg_b.remote = AuthConfig(method, Identity.parse("%any"))  # type: ignore[arg-type]
    p.a.creds.add_eap_secret(peer_pw, eap_id or "alice@test")
    if server_pw is not None:
        p.b.creds.add_eap_secret(server_pw, eap_id or "alice@test")
    return p


def _up(p: Pair) -> None:
    p.a.initiate("home", now=p.now)
    p.pump()


@pytest.mark.parametrize("auth", ["psk", "pubkey"])
@pytest.mark.parametrize("method", ["eap-md5", "eap-mschapv2"])
def test_eap_establishes_ike_and_child(method: str, auth: str) -> None:
    p = _eap_pair(method, auth)
    _up(p)
    (ia,) = p.of("a", ev.IkeSaEstablished)
    (ib,) = p.of("b", ev.IkeSaEstablished)
    assert ia.spi_i == ib.spi_i and ib.remote_id == "alice@test"
    (ca,) = p.of("a", ev.ChildSaEstablished)
    (cb,) = p.of("b", ev.ChildSaEstablished)
    assert ca.keys.key_out == cb.keys.key_in and ca.keys.spi_in == cb.keys.spi_out
    assert ca.local_ts == ("10.1.0.0/24",) and cb.local_ts == ("10.2.0.0/24",)
    # IKE_SA_INIT, IKE_AUTH(IDi, SA, TS), EAP-Identity, the method (MD5: 1 round, MSCHAPv2: 2), final AUTH
    requests = [d for side, d in p.wire if side == "a->b"]
    assert len(requests) == (5 if method == "eap-md5" else 6)
    sa_a = next(iter(p.a.sas.values()))
    assert sa_a.state is IkeState.ESTABLISHED


def test_eap_identity_other_than_ike_identity() -> None:
    p = _eap_pair("eap-mschapv2", eap_id="carol")
    _up(p)
    assert p.of("b", ev.IkeSaEstablished) and p.of("a", ev.ChildSaEstablished)


@pytest.mark.parametrize("method", ["eap-md5", "eap-mschapv2"])
def test_wrong_password_fails_both_sides(method: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair(method, server_pw="the-real-one")
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    (fb,) = p.of("b", ev.IkeSaFailed)
    # RFC 3748 4.2, RFC 7296 2.16: the gateway's last IKE_AUTH response is EAP-Failure, not a notify
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generating IKE_AUTH response")]
    assert last[-1].endswith("[ EAP/FAIL ]")
    assert "received EAP_FAILURE, EAP authentication failed" in caplog.text
    name = "EAP-MD5" if method == "eap-md5" else "EAP-MSCHAPv2"
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED and fa.authentication
    if method == "eap-md5":
        assert fa.reason == (f"the EAP server sent EAP-Failure, {name} rejected our credentials for 'alice@test' "
                             "(wrong password or unknown EAP identity)")
    else:  # RFC 2759 6: the gateway offered a new challenge; our peer's password is configured, it declines
        assert fa.reason == (f"the EAP server sent EAP-Failure, {name} rejected our credentials for 'alice@test': "
                             "E=691 authentication failure (wrong password), authentication failed, 1 retry left; "
                             "not retried: our password is configured")
        assert fb.reason.endswith("the peer did not retry (1 of 2 retries offered)")
    assert fb.authentication and "wrong password" in fb.reason and "'alice@test'" in fb.reason
    assert not p.a.sas and not p.b.sas
    assert not p.of("a", ev.ChildSaEstablished) and not p.of("b", ev.ChildSaEstablished)


def test_nak_to_another_method() -> None:
    p = _eap_pair("eap-md5", peer_method="eap-mschapv2")
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "EAP-Nak, it proposes EAP-MSCHAPv2" in fb.reason
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert fa.reason == ("the EAP server sent EAP-Failure after we refused EAP-MD5 with an EAP-Nak: we are "
                         "configured for EAP-MSCHAPv2 only")
    assert not p.a.sas and not p.b.sas


def test_missing_secret_on_server() -> None:
    p = _eap_pair("eap-md5", server_pw=None)
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "no EAP secret found for 'alice@test'" in fb.reason
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED and fa.authentication
    assert "sent EAP-Failure, EAP-MD5 rejected our credentials for 'alice@test'" in fa.reason


def test_missing_secret_on_peer() -> None:
    p = _eap_pair("eap-md5")
    p.a.creds.eap.clear()
    _up(p)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert "no EAP secret found for 'alice@test'" in fa.reason
    assert not p.of("b", ev.IkeSaEstablished)


def test_server_without_eap_config_refuses_request_without_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair("eap-md5")
    p.b.configs[0].remote = AuthConfig("psk", Identity.parse("alice@test"))
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "no matching peer config" in fb.reason
    assert p.of("a", ev.IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    # refused before EAP began: there is no EAP conversation to end with EAP-Failure
    assert "generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in caplog.text and "EAP/FAIL" not in caplog.text


def test_lost_eap_round_is_retransmitted() -> None:
    p = _eap_pair("eap-mschapv2")
    dropped: list[int] = []

    def drop(side: str, data: bytes) -> bool:
        # lose the first EAP response of the peer once (its 3rd request: after IKE_SA_INIT and IKE_AUTH 1)
        n = sum(1 for s, _ in p.wire if s == "a->b")
        if side == "a->b" and n == 3 and not dropped:
            dropped.append(n)
            return True
        return False

    p.drop = drop
    _up(p)
    assert dropped and not p.of("a", ev.IkeSaEstablished)
    p.advance(5)
    assert p.of("a", ev.IkeSaEstablished) and p.of("b", ev.IkeSaEstablished)
    assert p.of("a", ev.ChildSaEstablished)


def test_empty_eap_identity_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from core_ike.eap.methods import EapPeer

    p = _eap_pair("eap-md5")
    monkeypatch.setattr(EapPeer, "__init__", _peer_without_identity(EapPeer.__init__))
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "the peer sent an empty EAP-Identity" in fb.reason and fb.authentication
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert "EAP-Failure before EAP-MD5 started: it does not accept the EAP identity ''" in fa.reason


def _peer_without_identity(init):  # type: ignore[no-untyped-def]
    def patched(self, method, identity, password, rng):  # type: ignore[no-untyped-def]
        init(self, method, b"", password, rng)
    return patched


def test_server_with_configured_eap_identity_skips_eap_identity() -> None:
    p = _eap_pair("eap-md5")
    p.b.configs[0].remote.eap_id = "alice@test"
    _up(p)
    assert p.of("b", ev.IkeSaEstablished)
    # IKE_SA_INIT, IKE_AUTH 1 (answered with the MD5 challenge at once), the MD5 response, the final AUTH
    assert len([d for side, d in p.wire if side == "a->b"]) == 4


def test_forged_final_auth_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final AUTH must be computed with the MSK: a peer whose MSK differs is refused (RFC 7296 2.16)."""
    from core_ike.eap import methods

    p = _eap_pair("eap-mschapv2")
    real = methods.ms.msk
    calls: list[int] = []

    def msk(password: str, nt: bytes) -> bytes:
        calls.append(1)
        out = real(password, nt)
        return out if len(calls) > 1 else bytes(len(out))  # the peer (first to derive it) gets a wrong MSK

    monkeypatch.setattr(methods.ms, "msk", msk)
    _up(p)
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert "AUTH of 'alice@test' failed (the MSK differs)" in fb.reason
    assert p.of("a", ev.IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


class _AskingPeer:
    """Makes our EAP peer behave like a client that asks its user again after a Failure Request with
    R=1 ([MS-CHAP] 3.2.5.4): it answers the Failure's new challenge (C=) with the next password."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, passwords: list[bytes]) -> None:
        import re

        from core_ike.eap import methods
        from core_ike.eap.packet import EapPacket

        self.asked = 0
        real = methods.EapPeer._mschap

        def mschap(peer: methods.EapPeer, pkt: EapPacket) -> EapPacket:
            opcode, ms_id, body = methods._parse_mschap(pkt.data)
            m = re.search(rb"R=1 C=([0-9A-F]{32})", body)
            if opcode != 4 or m is None or not passwords:
                return real(peer, pkt)
            self.asked += 1
            peer.password = passwords.pop(0)
            value = bytes([16]) + bytes.fromhex(m.group(1).decode()) + b"gw"
            challenge = methods._mschap(1, (ms_id + 1) & 0xFF, value)
            return real(peer, EapPacket(pkt.code, pkt.identifier, pkt.type, challenge))

        monkeypatch.setattr(methods.EapPeer, "_mschap", mschap)


def test_mschapv2_retry_establishes_the_same_ike_sa(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password, then the right one in answer to the retry: the same IKE_SA comes up, its final
    AUTH computed with the MSK of the retried exchange (RFC 7296 2.16)."""
    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair("eap-mschapv2", peer_pw="typo", server_pw="carol-pw")
    asking = _AskingPeer(monkeypatch, [b"carol-pw"])
    _up(p)
    assert asking.asked == 1
    (ia,) = p.of("a", ev.IkeSaEstablished)
    (ib,) = p.of("b", ev.IkeSaEstablished)
    assert ia.spi_i == ib.spi_i and p.of("a", ev.ChildSaEstablished) and p.of("b", ev.ChildSaEstablished)
    # one round more than test_eap_establishes_ike_and_child: the Failure Request and the new Response
    assert len([d for side, d in p.wire if side == "a->b"]) == 7
    assert "EAP-MSCHAPv2 verification of 'alice@test' failed: wrong password, retry 1 of 2: new challenge sent" \
        in caplog.text
    assert "EAP method EAP-MSCHAPv2 of 'alice@test' succeeded, MSK established" in caplog.text


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_mschapv2_retries_end_with_eap_failure(monkeypatch: pytest.MonkeyPatch, retries: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair("eap-mschapv2", peer_pw="typo", server_pw="carol-pw")
    p.b.configs[0].remote.eap_retries = retries
    asking = _AskingPeer(monkeypatch, [b"typo2", b"typo3", b"typo4"])
    _up(p)
    assert asking.asked == retries
    (fb,) = p.of("b", ev.IkeSaFailed)
    (fa,) = p.of("a", ev.IkeSaFailed)
    tail = f", no retry left ({retries} offered)" if retries else " (no retries configured)"
    assert fb.reason == f"EAP-MSCHAPv2 verification of 'alice@test' failed: wrong password{tail}"
    assert fa.reason.startswith("the EAP server sent EAP-Failure, EAP-MSCHAPv2 rejected our credentials")
    assert caplog.text.count("new challenge sent") == retries
    assert len([d for side, d in p.wire if side == "a->b"]) == 4 + retries
    assert not p.a.sas and not p.b.sas


def test_peer_ending_eap_with_informational_auth_failed(caplog: pytest.LogCaptureFixture) -> None:
    """charon's client reads our Failure Request (R=1) and, not retrying, sends INFORMATIONAL
    N(AUTH_FAILED) instead of an EAP Response (RFC 7296 2.21.2): answered, and our IKE_SA is given up."""
    from core_ike.codec.payloads import NotifyPayload
    from core_ike.constants import ExchangeType

    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair("eap-mschapv2", peer_pw="typo")
    failure_requests: list[bytes] = []

    def drop(side: str, data: bytes) -> bool:  # the Failure Request (R=1) goes to our stand-in for charon
        if side == "b->a" and "retry 1 of 2" in caplog.text and not failure_requests:
            failure_requests.append(data)
            return True
        return False

    p.drop = drop
    _up(p)
    assert failure_requests and not p.of("b", ev.IkeSaFailed) and len(p.b.sas) == 1
    sa = next(iter(p.a.sas.values()))
    info = sa.tm.new_message(ExchangeType.INFORMATIONAL, False, 4)
    info.payloads.append(NotifyPayload(NotifyType.AUTHENTICATION_FAILED))
    (packet,) = sa.tm._encode(info)
    p.b.receive(packet, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    p.pump()
    (fb,) = p.of("b", ev.IkeSaFailed)
    assert fb.reason == ("the peer ended EAP-MSCHAPv2 with AUTHENTICATION_FAILED after our retry offer (1 of 2; "
                         "EAP-MSCHAPv2 verification of 'alice@test' failed: wrong password): it does not retry")
    assert fb.authentication and fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "generating INFORMATIONAL response 4 [ ]" in caplog.text
    assert not p.b.sas


def test_informational_before_eap_finished_without_an_ending_notify_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    """RFC 7296 1.2: other INFORMATIONAL requests of an unauthenticated peer stay refused."""
    from core_ike.constants import ExchangeType

    caplog.set_level(logging.INFO, "core_ike")
    p = _eap_pair("eap-mschapv2", peer_pw="typo")
    p.drop = lambda side, data: side == "b->a" and "retry 1 of 2" in caplog.text
    _up(p)
    sa = next(iter(p.a.sas.values()))
    (packet,) = sa.tm._encode(sa.tm.new_message(ExchangeType.INFORMATIONAL, False, 4))
    p.b.receive(packet, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    p.pump()
    assert "INFORMATIONAL request before the IKE_SA is authenticated" in caplog.text
    assert len(p.b.sas) == 1 and not p.of("b", ev.IkeSaFailed)
