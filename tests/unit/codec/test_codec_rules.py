"""Message legality rules (RFC 7296 1.2-1.5, 3.14; ME draft 4.2, 5)."""

from __future__ import annotations

from typing import Any

import pytest

from core_ike.codec.message import Message, decode_message, decrypt_message, encode_message
from core_ike.codec.payloads import (
    AuthPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)
from core_ike.codec.rules import RULES, check_rules, is_connectivity_check
from core_ike.constants import ExchangeType, HeaderFlag, IdType, NotifyType, PayloadType, ProtocolId
from core_ike.errors import LocalError, ProtocolError

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")
ZERO = bytes(8)

X = ExchangeType
REQ, RESP = HeaderFlag.INITIATOR, HeaderFlag.RESPONSE

SA = SaPayload([])
KE = KePayload(19, bytes(64))
NO = NoncePayload(bytes(32))
IDI = IdPayload(PayloadType.IDi, IdType.FQDN, b"a")
IDR = IdPayload(PayloadType.IDr, IdType.FQDN, b"b")
IDP = IdPayload(PayloadType.ID_PEER, IdType.FQDN, b"peer")
AUTH = AuthPayload(2, bytes(32))
TSI = TsPayload(PayloadType.TSi)
TSR = TsPayload(PayloadType.TSr)
V = VendorIdPayload(b"v")
D = DeletePayload(ProtocolId.IKE)
UNK = UnknownPayload(99, False, b"")


def N(t: int, data: bytes = b"") -> NotifyPayload:
    return NotifyPayload(t, data)


def msg(exchange: int, flags: HeaderFlag, payloads: list[Payload], *, encrypted: bool,
        spi_i: bytes = SPI_I, spi_r: bytes = SPI_R) -> Message:
    m = Message(spi_i, spi_r, exchange, flags, 1, payloads, encrypted=encrypted)
    m.decrypted = encrypted  # as returned by decrypt_message
    return m


CHECK = [N(NotifyType.ME_CONNECTID, b"1234"), N(NotifyType.ME_ENDPOINT, bytes(8)),
         N(NotifyType.ME_CONNECTAUTH, bytes(20))]

LEGAL: list[tuple[str, Message]] = [
    ("init-req", msg(X.IKE_SA_INIT, REQ, [SA, KE, NO, N(NotifyType.NAT_DETECTION_SOURCE_IP), V],
                     encrypted=False)),
    ("init-req-cookie", msg(X.IKE_SA_INIT, REQ, [N(NotifyType.COOKIE, b"c"), SA, KE, NO], encrypted=False)),
    ("init-req-unknown-noncritical", msg(X.IKE_SA_INIT, REQ, [SA, KE, NO, UNK], encrypted=False)),
    ("init-resp-full", msg(X.IKE_SA_INIT, RESP, [SA, KE, NO, N(NotifyType.ME_MEDIATION)], encrypted=False)),
    ("init-resp-cookie", msg(X.IKE_SA_INIT, RESP, [N(NotifyType.COOKIE, b"c")], encrypted=False)),
    ("auth-req", msg(X.IKE_AUTH, REQ, [IDI, N(NotifyType.INITIAL_CONTACT), IDR, AUTH, SA, TSI, TSR],
                     encrypted=True)),
    ("auth-req-childless-me", msg(X.IKE_AUTH, REQ, [IDI, AUTH, N(NotifyType.ME_ENDPOINT, bytes(8))],
                                  encrypted=True)),
    ("auth-resp", msg(X.IKE_AUTH, RESP, [IDR, AUTH, SA, TSI, TSR], encrypted=True)),
    ("auth-resp-error", msg(X.IKE_AUTH, RESP, [N(NotifyType.AUTHENTICATION_FAILED)], encrypted=True)),
    ("child-req", msg(X.CREATE_CHILD_SA, REQ, [SA, NO, KE, TSI, TSR], encrypted=True)),
    ("child-resp-error", msg(X.CREATE_CHILD_SA, RESP, [N(NotifyType.NO_PROPOSAL_CHOSEN)], encrypted=True)),
    ("info-empty", msg(X.INFORMATIONAL, REQ, [], encrypted=True)),
    ("info-delete", msg(X.INFORMATIONAL, RESP, [D], encrypted=True)),
    ("me-connect-req", msg(X.ME_CONNECT, REQ, [N(NotifyType.ME_CONNECTID, b"1234"), IDP, V],
                           encrypted=True)),
    ("me-connect-resp-empty", msg(X.ME_CONNECT, RESP, [], encrypted=True)),
    ("me-connect-resp-failed", msg(X.ME_CONNECT, RESP, [N(NotifyType.ME_CONNECT_FAILED)], encrypted=True)),
    ("check-req", msg(X.INFORMATIONAL, REQ, CHECK, encrypted=False, spi_i=ZERO, spi_r=ZERO)),
    ("check-resp", msg(X.INFORMATIONAL, RESP, CHECK, encrypted=False, spi_i=ZERO, spi_r=ZERO)),
    ("unprotected-invalid-ike-spi", msg(X.INFORMATIONAL, RESP, [N(NotifyType.INVALID_IKE_SPI)],
                                        encrypted=False)),
]


@pytest.mark.parametrize("name,m", LEGAL, ids=[n for n, _ in LEGAL])
def test_legal(name: str, m: Message) -> None:
    check_rules(m)


ILLEGAL: list[tuple[str, Message, str]] = [
    ("init-req-no-ke", msg(X.IKE_SA_INIT, REQ, [SA, NO], encrypted=False), "KE occurs 0 times"),
    ("init-req-two-sa", msg(X.IKE_SA_INIT, REQ, [SA, SA, KE, NO], encrypted=False), "SA occurs 2 times"),
    ("init-req-auth", msg(X.IKE_SA_INIT, REQ, [SA, KE, NO, AUTH], encrypted=False), "AUTH not allowed"),
    ("init-encrypted", msg(X.IKE_SA_INIT, REQ, [SA, KE, NO], encrypted=True), "must not be encrypted"),
    ("auth-plain", msg(X.IKE_AUTH, REQ, [IDI, AUTH], encrypted=False), "must be encrypted"),
    ("auth-two-idi", msg(X.IKE_AUTH, REQ, [IDI, IDI, AUTH], encrypted=True), "IDi occurs 2 times"),
    ("auth-ke", msg(X.IKE_AUTH, REQ, [IDI, AUTH, KE], encrypted=True), "KE not allowed"),
    ("child-no-nonce", msg(X.CREATE_CHILD_SA, REQ, [SA, TSI, TSR], encrypted=True), "No occurs 0 times"),
    ("info-sa", msg(X.INFORMATIONAL, REQ, [SA], encrypted=True), "SA not allowed"),
    ("me-connect-no-idp", msg(X.ME_CONNECT, REQ, [N(NotifyType.ME_CONNECTID, b"1234")], encrypted=True),
     "IDp occurs 0 times"),
    ("me-connect-two-idp", msg(X.ME_CONNECT, REQ, [IDP, IDP], encrypted=True), "IDp occurs 2 times"),
    ("me-connect-resp-idp", msg(X.ME_CONNECT, RESP, [IDP], encrypted=True), "IDp not allowed"),
    ("me-connect-plain", msg(X.ME_CONNECT, REQ, [IDP], encrypted=False), "must be encrypted"),
    ("check-with-vendor", msg(X.INFORMATIONAL, REQ, [*CHECK, V], encrypted=False, spi_i=ZERO, spi_r=ZERO),
     "V not allowed unencrypted"),
    ("check-notify-nonzero-spi", msg(X.INFORMATIONAL, REQ, CHECK, encrypted=False),
     "N(ME_CID) not allowed unencrypted"),
    ("plain-info-delete", msg(X.INFORMATIONAL, REQ, [D], encrypted=False), "D not allowed unencrypted"),
    ("plain-info-other-notify", msg(X.INFORMATIONAL, REQ, [N(NotifyType.AUTHENTICATION_FAILED)],
                                    encrypted=False, spi_i=ZERO, spi_r=ZERO),
     "N(AUTH_FAILED) not allowed unencrypted"),
    ("unknown-exchange", msg(77, REQ, [], encrypted=True), "no rules for exchange type 77"),
]


@pytest.mark.parametrize("name,m,why", ILLEGAL, ids=[n for n, _, _ in ILLEGAL])
def test_illegal(name: str, m: Message, why: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        check_rules(m)
    assert ei.value.notify == NotifyType.INVALID_SYNTAX
    assert why in str(ei.value)


def test_rule_names_in_errors() -> None:
    with pytest.raises(ProtocolError, match=r"^ME_CONNECT request: "):
        check_rules(msg(X.ME_CONNECT, REQ, [], encrypted=True))


def test_payloads_outside_sk_in_encrypted_exchange(protector: Any) -> None:
    m = msg(X.IKE_AUTH, REQ, [V, IDI, AUTH], encrypted=True)
    m.unprotected = 1
    with pytest.raises(ProtocolError, match="V must be inside SK"):
        check_rules(m)


def test_undecrypted_message_is_local_error(protector: Any) -> None:
    wire = encode_message(Message(SPI_I, SPI_R, X.IKE_AUTH, REQ, 1, [IDI, AUTH], encrypted=True), protector)
    m = decode_message(wire[0])
    with pytest.raises(LocalError):
        check_rules(m)
    check_rules(decrypt_message(m, protector))


def test_is_connectivity_check() -> None:
    assert is_connectivity_check(msg(X.INFORMATIONAL, REQ, CHECK, encrypted=False, spi_i=ZERO, spi_r=ZERO))
    assert not is_connectivity_check(msg(X.INFORMATIONAL, REQ, CHECK, encrypted=False))
    assert not is_connectivity_check(msg(X.INFORMATIONAL, REQ, [], encrypted=False, spi_i=ZERO, spi_r=ZERO))
    assert not is_connectivity_check(
        msg(X.INFORMATIONAL, REQ, [*CHECK, V], encrypted=False, spi_i=ZERO, spi_r=ZERO)
    )


def test_rules_table_covers_exchanges() -> None:
    for x in (X.IKE_SA_INIT, X.IKE_AUTH, X.CREATE_CHILD_SA, X.INFORMATIONAL, X.ME_CONNECT):
        for resp in (False, True):
            rule = RULES[(x, resp)]
            assert rule.encrypted == (x != X.IKE_SA_INIT)
            assert all(0 <= r.min <= r.max for r in rule.payloads)
