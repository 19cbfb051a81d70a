"""IKE message codec (RFC 7296 3.1, 3.14; RFC 3948 demux): vectors, SK, malformed messages."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest

from core_ike.codec.message import (
    Message,
    decode_message,
    decrypt_message,
    encode_message,
    split_natt,
)
from core_ike.codec.payloads import (
    CfgAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    SkPayload,
    Transform,
    UnknownPayload,
    VendorIdPayload,
)
from core_ike.constants import (
    CfgType,
    DhId,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from core_ike.errors import DecodeError, IntegrityError, LocalError, ProtocolError

ZERO = bytes(8)
SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")

# --- docs/protocol.md §7.2: connectivity check known answer ----------------------------------

CID = bytes.fromhex("deadbeef")
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))
REQ_EP = bytes.fromhex("0080ffff00020000")
RESP_EP = bytes.fromhex("0080ffff01021194cb007101")
REQ_MAC = bytes.fromhex("4ccd44239690d18fad7883bdfb6fc61257395bbc")
RESP_MAC = bytes.fromhex("4d1cb1cf71ef9bdaf571dad8ad0f593203154232")
CHECK_REQUEST = bytes.fromhex(
    "00000000000000000000000000000000 2920250800000001 00000054"
    "2900000c 0000a005 deadbeef"
    "29000010 0000a003 0080ffff00020000"
    "0000001c 0000a007 4ccd44239690d18fad7883bdfb6fc61257395bbc"
)
CHECK_RESPONSE = bytes.fromhex(
    "00000000000000000000000000000000 2920252000000001 00000058"
    "2900000c 0000a005 deadbeef"
    "29000014 0000a003 0080ffff01021194cb007101"
    "0000001c 0000a007 4d1cb1cf71ef9bdaf571dad8ad0f593203154232"
)


def _check(flags: HeaderFlag, ep: bytes, mac: bytes) -> Message:
    return Message(ZERO, ZERO, ExchangeType.INFORMATIONAL, flags, 1, [
        NotifyPayload(NotifyType.ME_CONNECTID, CID),
        NotifyPayload(NotifyType.ME_ENDPOINT, ep),
        NotifyPayload(NotifyType.ME_CONNECTAUTH, mac),
    ])


def test_me_check_macs_match_reference() -> None:
    mid = (1).to_bytes(4, "big")
    assert hashlib.sha1(mid + CID + REQ_EP + KEY_A).digest() == REQ_MAC
    assert hashlib.sha1(mid + CID + RESP_EP + KEY_B).digest() == RESP_MAC


@pytest.mark.parametrize(
    "msg,wire",
    [
        (_check(HeaderFlag.INITIATOR, REQ_EP, REQ_MAC), CHECK_REQUEST),
        (_check(HeaderFlag.RESPONSE, RESP_EP, RESP_MAC), CHECK_RESPONSE),
    ],
    ids=["request", "response"],
)
def test_me_check_vector_byte_exact(msg: Message, wire: bytes) -> None:
    assert encode_message(msg) == [wire]
    back = decode_message(wire)
    assert back.raw == wire
    assert (back.spi_i, back.spi_r, back.exchange, back.flags, back.message_id) == (
        msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id,
    )
    assert back.payloads == msg.payloads
    assert not back.encrypted and back.sk is None
    assert back.summary() == "[ N(ME_CID) N(ME_EP) N(ME_CAUTH) ]"


def test_me_check_via_natt_marker() -> None:
    kind, data = split_natt(b"\x00\x00\x00\x00" + CHECK_REQUEST)
    assert (kind, data) == ("ike", CHECK_REQUEST)
    msg = decode_message(data)
    assert msg.is_request and msg.is_initiator and not msg.is_response
    ep = msg.notify(NotifyType.ME_ENDPOINT)
    assert ep is not None and ep.data == REQ_EP


@pytest.mark.parametrize(
    "datagram,kind,payload",
    [
        (b"\xff", "keepalive", b""),
        (b"\x00\x00\x00\x00abc", "ike", b"abc"),
        (b"\x00\x00\x00\x01" + bytes(8), "esp", b"\x00\x00\x00\x01" + bytes(8)),
        (b"\xff\xff\xff\xff", "esp", b"\xff\xff\xff\xff"),
    ],
)
def test_split_natt(datagram: bytes, kind: str, payload: bytes) -> None:
    assert split_natt(datagram) == (kind, payload)


@pytest.mark.parametrize("datagram", [b"", b"\x00", b"\x00\x00\x00", b"\xfe"])
def test_split_natt_runt(datagram: bytes) -> None:
    with pytest.raises(DecodeError):
        split_natt(datagram)


# --- IKE_SA_INIT known bytes -----------------------------------------------------------------------

INIT_REQUEST = Message(SPI_I, ZERO, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, [
    SaPayload([Proposal(1, ProtocolId.IKE, b"", [
        Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
        Transform(TransformType.DH, DhId.ECP_256),
    ])]),
    KePayload(DhId.ECP_256, bytes(64)),
    NoncePayload(bytes(range(32))),
    NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
    NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, b"\x01" * 20),
])
INIT_REQUEST_WIRE = bytes.fromhex(
    "0102030405060708 0000000000000000 21202208 00000000 000000e0"
    "22000020 0000001c 01010002 0300000c 0100000c 800e0080 00000008 04000013"  # SA
    "28000048 00130000" + "00" * 64 +                                          # KE group 19
    "29000024" + bytes(range(32)).hex() +                                      # Nonce
    "2900001c 00004004" + "00" * 20 +                                          # N(NATD_S_IP)
    "0000001c 00004005" + "01" * 20                                            # N(NATD_D_IP)
)


def test_ike_sa_init_byte_exact() -> None:
    assert encode_message(INIT_REQUEST) == [INIT_REQUEST_WIRE]
    back = decode_message(INIT_REQUEST_WIRE)
    assert back.payloads == INIT_REQUEST.payloads
    assert back.summary() == "[ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]"
    assert back.describe() == "IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]"
    assert back.get(PayloadType.KE) == INIT_REQUEST.payloads[1]
    assert back.first(KePayload) == INIT_REQUEST.payloads[1]
    assert len(back.notifies()) == 2
    assert back.notify(NotifyType.COOKIE) is None


# --- SK protection ---------------------------------------------------------------------------------

AUTH_PAYLOADS = [
    IdPayload(PayloadType.IDi, IdType.FQDN, b"alice"),
    NotifyPayload(NotifyType.INITIAL_CONTACT),
    IdPayload(PayloadType.IDr, IdType.FQDN, b"bob"),
    CpPayload(CfgType.CFG_REQUEST, [CfgAttribute(1), CfgAttribute(3)]),
    EapPayload(b"\x02\x05\x00\x06\x01a"),
    NotifyPayload(NotifyType.ME_ENDPOINT, bytes(8)),
]


def _auth_msg(payloads: list[Any] | None = None) -> Message:
    return Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1,
                   list(AUTH_PAYLOADS if payloads is None else payloads), encrypted=True)


def test_sk_round_trip(protector: Any) -> None:
    [wire] = encode_message(_auth_msg(), protector)
    msg = decode_message(wire)
    assert msg.encrypted and not msg.decrypted and msg.payloads == []
    assert isinstance(msg.sk, SkPayload) and msg.sk.first_inner == PayloadType.IDi
    assert msg.sk.prefix == wire[:32] and msg.sk.prefix[16] == PayloadType.SK
    assert msg.summary() == "[ SK ]"
    plain = decrypt_message(msg, protector)
    assert plain.decrypted and plain.unprotected == 0
    for p in plain.payloads:
        if isinstance(p, IdPayload):
            p.raw_body = None
    assert plain.payloads == AUTH_PAYLOADS
    assert plain.summary() == "[ IDi N(INIT_CONTACT) IDr CPRQ(ADDR DNS) EAP/RES/ID N(ME_EP) ]"
    assert decrypt_message(plain, protector) is plain


def test_sk_empty_informational(protector: Any) -> None:
    msg = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, HeaderFlag.RESPONSE, 7, [], encrypted=True)
    [wire] = encode_message(msg, protector)
    assert wire[16] == PayloadType.SK and wire[28] == 0  # SK Next Payload = 0 (no inner payloads)
    back = decrypt_message(decode_message(wire), protector)
    assert back.payloads == [] and back.summary() == "[ ]"
    assert back.describe() == "INFORMATIONAL response 7 [ ]"


def test_sk_tampered_fails_integrity(protector: Any) -> None:
    [wire] = encode_message(_auth_msg(), protector)
    bad = bytearray(wire)
    bad[40] ^= 1
    with pytest.raises(IntegrityError):
        decrypt_message(decode_message(bytes(bad)), protector)
    bad = bytearray(wire)
    bad[23] ^= 1  # message ID is covered by the ICV
    with pytest.raises(IntegrityError):
        decrypt_message(decode_message(bytes(bad)), protector)


def test_sk_wrong_key(make_protector: Any) -> None:
    [wire] = encode_message(_auth_msg(), make_protector(b"a"))
    with pytest.raises(IntegrityError):
        decrypt_message(decode_message(wire), make_protector(b"b"))


def test_sk_needs_protector() -> None:
    with pytest.raises(LocalError):
        encode_message(_auth_msg())


@pytest.mark.parametrize(
    "first,plaintext,notify",
    [
        (PayloadType.VENDOR_ID, bytes.fromhex("00000010 41"), NotifyType.INVALID_SYNTAX),
        (PayloadType.VENDOR_ID, bytes.fromhex("00000005 41 00"), NotifyType.INVALID_SYNTAX),
        (PayloadType.NONCE, bytes.fromhex("00000006 4141"), NotifyType.INVALID_SYNTAX),
        (PayloadType.SK, bytes.fromhex("00000004"), NotifyType.INVALID_SYNTAX),
        (99, bytes.fromhex("00800004"), NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD),
    ],
    ids=["length-beyond", "trailing", "short-nonce", "nested-sk", "critical-unknown"],
)
def test_inner_errors_are_protocol_errors(protector: Any, first: int, plaintext: bytes,
                                          notify: NotifyType) -> None:
    [wire] = _seal_with_first(protector, _auth_msg(), first, plaintext)
    with pytest.raises(ProtocolError) as ei:
        decrypt_message(decode_message(wire), protector)
    assert ei.value.notify == notify


def _seal_with_first(protector: Any, msg: Message, first: int, plaintext: bytes) -> list[bytes]:
    """A correctly sealed SK around arbitrary inner octets."""
    sealed = protector.sealed_length(len(plaintext))
    hdr = msg.spi_i + msg.spi_r + struct.pack("!BBBBII", 46, 0x20, msg.exchange, msg.flags,
                                               msg.message_id, 32 + sealed)
    prefix = hdr + struct.pack("!BBH", first, 0, 4 + sealed)
    return [prefix + protector.seal(prefix, plaintext)]


def test_outer_payloads_before_sk_are_kept_and_marked(protector: Any) -> None:
    vid = bytes.fromhex("2e000005 41")  # V, next = SK
    inner = bytes.fromhex("00000005 42")
    sealed = protector.sealed_length(len(inner))
    total = 28 + len(vid) + 4 + sealed
    hdr = SPI_I + SPI_R + struct.pack("!BBBBII", 43, 0x20, 37, 0x08, 3, total)
    prefix = hdr + vid + struct.pack("!BBH", 43, 0, 4 + sealed)
    wire = prefix + protector.seal(prefix, inner)
    msg = decode_message(wire)
    assert msg.payloads == [VendorIdPayload(b"A")] and msg.summary() == "[ V SK ]"
    plain = decrypt_message(msg, protector)
    assert plain.payloads == [VendorIdPayload(b"A"), VendorIdPayload(b"B")]
    assert plain.unprotected == 1


# --- malformed messages ----------------------------------------------------------------------------

def _hdr(first: int = 0, version: int = 0x20, length: int = 28, exchange: int = 34) -> bytes:
    return SPI_I + ZERO + bytes([first, version, exchange, 0x08]) + bytes(4) + length.to_bytes(4, "big")


V5 = bytes.fromhex("00000005 41")


def _sk(nxt: int = 43, body_len: int = 30) -> bytes:
    return bytes([nxt, 0]) + (body_len + 4).to_bytes(2, "big") + bytes(body_len)


MALFORMED: list[tuple[str, bytes, type[Exception], NotifyType | None]] = [
    ("empty", b"", DecodeError, None),
    ("truncated-header", _hdr()[:27], DecodeError, None),
    ("length-field-short", _hdr(43, length=28) + V5, DecodeError, None),
    ("length-field-long", _hdr(43, length=40) + V5, DecodeError, None),
    ("trailing-junk", _hdr(43, length=33) + V5 + b"\x00", DecodeError, None),
    ("oversized", _hdr(43, length=70000) + bytes(70000 - 28), DecodeError, None),
    ("major-version-3", _hdr(43, version=0x30, length=33) + V5, ProtocolError,
     NotifyType.INVALID_MAJOR_VERSION),
    ("major-version-1", _hdr(43, version=0x10, length=33) + V5, ProtocolError,
     NotifyType.INVALID_MAJOR_VERSION),
    ("payload-length-beyond", _hdr(43, length=33) + bytes.fromhex("00000009 41"), DecodeError, None),
    ("payload-length-below-4", _hdr(43, length=33) + bytes.fromhex("00000003 41"), DecodeError, None),
    ("payload-header-truncated", _hdr(43, length=30) + bytes.fromhex("0000"), DecodeError, None),
    ("chain-continues-past-end", _hdr(43, length=33) + bytes.fromhex("2b000005 41"), DecodeError, None),
    ("unknown-critical", _hdr(99, length=36) + bytes.fromhex("00800008 00000000"), ProtocolError,
     NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD),
    ("sk-not-last", _hdr(46, length=28 + 34 + 5) + bytes([43, 0, 0, 34]) + bytes(30) + V5,
     DecodeError, None),
    ("two-sk", _hdr(46, length=28 + 68) + _sk() + _sk(), DecodeError, None),
    ("sk-length-beyond", _hdr(46, length=28 + 10) + bytes([43, 0, 0, 40]) + bytes(6), DecodeError, None),
    ("skf-short", _hdr(53, length=28 + 6) + bytes([43, 0, 0, 6, 0, 1]), DecodeError, None),
    ("skf-number-zero", _hdr(53, length=28 + 40) + bytes.fromhex("2b000028 00000002") + bytes(32),
     DecodeError, None),
    ("skf-number-above-total", _hdr(53, length=28 + 40) + bytes.fromhex("00000028 00030002") + bytes(32),
     DecodeError, None),
    ("skf-next-in-later-fragment", _hdr(53, length=28 + 40) + bytes.fromhex("2b000028 00020002")
     + bytes(32), DecodeError, None),
    ("bad-id-length", _hdr(35, length=28 + 7) + bytes.fromhex("00000007 010000"), DecodeError, None),
    ("bad-ts-length", _hdr(44, length=28 + 24) + bytes.fromhex("00000018 01000000 07000011")
     + bytes(12), DecodeError, None),
    ("bad-notify-spi-size", _hdr(41, length=28 + 10) + bytes.fromhex("0000000a 0308 4009 0000"),
     DecodeError, None),
    ("bad-notify-length", _hdr(41, length=28 + 6) + bytes.fromhex("00000006 0000"), DecodeError, None),
]


@pytest.mark.parametrize("name,data,exc,notify", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_message(name: str, data: bytes, exc: type[Exception], notify: NotifyType | None) -> None:
    with pytest.raises(exc) as ei:
        decode_message(data)
    assert type(ei.value) is exc
    if notify is not None:
        assert isinstance(ei.value, ProtocolError) and ei.value.notify == notify


def test_unknown_critical_data_is_type_octet() -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_message(_hdr(99, length=36) + bytes.fromhex("00800008 00000000"))
    assert ei.value.data == b"\x63"


def test_unknown_exchange_and_flags_kept() -> None:
    wire = SPI_I + SPI_R + bytes([43, 0x2F, 200, 0x28 | 0x01]) + bytes(4) + (33).to_bytes(4, "big") + V5
    msg = decode_message(wire)
    assert msg.exchange == 200 and not isinstance(msg.exchange, ExchangeType)
    assert msg.is_response and int(msg.flags) == 0x29  # minor version and unknown flag bits ignored
    assert msg.describe() == "200 response 0 [ V ]"


def test_unknown_noncritical_in_message() -> None:
    wire = _hdr(99, length=28 + 8 + 5) + bytes.fromhex("2b000008 01020304") + V5
    msg = decode_message(wire)
    assert msg.payloads == [UnknownPayload(99, False, b"\x01\x02\x03\x04"), VendorIdPayload(b"A")]
    assert msg.summary() == "[ UNKNOWN(99) V ]"
    assert encode_message(msg) == [wire.replace(wire[19:20], bytes([0x08]))]


def test_spi_length_checked_on_encode() -> None:
    with pytest.raises(LocalError):
        encode_message(Message(b"\x01", ZERO, ExchangeType.INFORMATIONAL, HeaderFlag.NONE, 0))


def test_summary_names() -> None:
    msg = Message(SPI_I, SPI_R, ExchangeType.ME_CONNECT, HeaderFlag.INITIATOR, 4, [
        NotifyPayload(NotifyType.ME_CONNECTID, b"1234"),
        NotifyPayload(NotifyType.ME_CONNECTKEY, bytes(16)),
        NotifyPayload(NotifyType.ME_CALLBACK),
        NotifyPayload(NotifyType.ME_RESPONSE),
        NotifyPayload(NotifyType.ME_MEDIATION),
        NotifyPayload(NotifyType.ME_CONNECT_FAILED),
        NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02"),
        NotifyPayload(NotifyType.FRAGMENTATION_SUPPORTED),
        NotifyPayload(NotifyType.COOKIE, b"c"),
        NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED),
        NotifyPayload(55555),
        IdPayload(PayloadType.ID_PEER, IdType.FQDN, b"bob"),
        DeletePayload(ProtocolId.ESP, [bytes(4)]),
        VendorIdPayload(b"v"),
        CpPayload(CfgType.CFG_REPLY, [CfgAttribute(1), CfgAttribute(99)]),
    ])
    assert msg.describe() == (
        "ME_CONNECT request 4 [ N(ME_CID) N(ME_CKEY) N(ME_CB) N(ME_R) N(ME_MED) N(ME_CONN_FAIL) "
        "N(HASH_ALG) N(FRAG_SUP) N(COOKIE) N(INTERMEDIATE_EXCHANGE_SUPPORTED) N(55555) IDp D V "
        "CPRP(ADDR 99) ]"
    )
    assert msg.get_all(PayloadType.NOTIFY)[0] == msg.notify(NotifyType.ME_CONNECTID)
    assert msg.error_notify() == NotifyPayload(NotifyType.ME_CONNECT_FAILED)
    assert msg.all_of(IdPayload)[0].data == b"bob"
