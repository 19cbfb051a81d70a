"""Payload body codecs (RFC 7296 3.3-3.16, ME draft 4.3): round trips, exact bytes, malformed bodies."""

from __future__ import annotations

import pytest

from core_ike.buffer import Buffer
from core_ike.codec import wire
from core_ike.codec.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CfgAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)
from core_ike.constants import (
    CfgType,
    DhId,
    EncrId,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from core_ike.errors import DecodeError, LocalError, ProtocolError

IKE_PROPOSAL = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    [
        Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
        Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.DH, DhId.ECP_256),
    ],
)
ESP_PROPOSAL = Proposal(
    2,
    ProtocolId.ESP,
    b"\xc0\x01\x02\x03",
    [Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256), Transform(TransformType.ESN, 0)],
)

ROUND_TRIP: list[tuple[str, Payload]] = [
    ("sa", SaPayload([IKE_PROPOSAL, ESP_PROPOSAL])),
    ("sa-empty", SaPayload([])),
    ("sa-rekey-spi", SaPayload([Proposal(1, ProtocolId.IKE, bytes(range(8)), IKE_PROPOSAL.transforms)])),
    ("ke", KePayload(DhId.ECP_256, bytes(range(64)))),
    ("idi-fqdn", IdPayload(PayloadType.IDi, IdType.FQDN, b"alice.example")),
    ("idr-ipv4", IdPayload(PayloadType.IDr, IdType.IPV4_ADDR, bytes([10, 1, 0, 1]))),
    ("idr-ipv6", IdPayload(PayloadType.IDr, IdType.IPV6_ADDR, bytes(16))),
    ("idp-keyid", IdPayload(PayloadType.ID_PEER, IdType.KEY_ID, b"\x01\x02\x03")),
    ("id-null", IdPayload(PayloadType.IDi, IdType.NULL, b"")),
    ("cert", CertPayload(4, b"\x30\x82\x01\x00" + bytes(20))),
    ("certreq", CertReqPayload(4, bytes(40))),
    ("auth", AuthPayload(2, bytes(32))),
    ("nonce-16", NoncePayload(bytes(16))),
    ("nonce-256", NoncePayload(bytes(256))),
    ("notify-plain", NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20))),
    ("notify-empty", NotifyPayload(NotifyType.FRAGMENTATION_SUPPORTED)),
    ("notify-esp-spi", NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x01\x02\x03\x04")),
    ("notify-unknown-type", NotifyPayload(50000, b"xyz")),
    ("delete-ike", DeletePayload(ProtocolId.IKE, [])),
    ("delete-esp", DeletePayload(ProtocolId.ESP, [b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"])),
    ("vendor", VendorIdPayload(b"strongSwan")),
    (
        "tsi",
        TsPayload(
            PayloadType.TSi,
            [
                TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 65535, bytes(4), b"\xff" * 4),
                TrafficSelector(TsType.IPV6_ADDR_RANGE, 17, 500, 500, bytes(16), b"\xff" * 16),
            ],
        ),
    ),
    ("tsr-empty", TsPayload(PayloadType.TSr, [])),
    (
        "cp",
        CpPayload(CfgType.CFG_REQUEST, [CfgAttribute(1), CfgAttribute(3), CfgAttribute(7, b"x")]),
    ),
    ("eap", EapPayload(b"\x01\x01\x00\x05\x01")),
]


def _body(p: Payload) -> bytes:
    buf = Buffer()
    wire.REGISTRY[int(p.ptype)].push(buf, p)
    return buf.getvalue()


def _parse(ptype: int, body: bytes) -> Payload:
    return wire.pull_body(Buffer(body), ptype, False, len(body))


@pytest.mark.parametrize("name,payload", ROUND_TRIP, ids=[n for n, _ in ROUND_TRIP])
def test_body_round_trip(name: str, payload: Payload) -> None:
    body = _body(payload)
    back = _parse(int(payload.ptype), body)
    if isinstance(payload, IdPayload):
        assert isinstance(back, IdPayload)
        assert back.raw_body == body
        back.raw_body = None
    assert back == payload
    assert _body(back) == body


@pytest.mark.parametrize("name,payload", ROUND_TRIP, ids=[n for n, _ in ROUND_TRIP])
def test_chain_round_trip(name: str, payload: Payload) -> None:
    chain = [NotifyPayload(NotifyType.COOKIE, b"c" * 8), payload, VendorIdPayload(b"v")]
    data = wire.encode_payloads(chain)
    back = wire.decode_payloads(data, PayloadType.NOTIFY)
    assert [type(p) for p in back] == [type(p) for p in chain]
    assert wire.encode_payloads(back) == data


def test_sa_exact_bytes_with_key_length_attribute() -> None:
    sa = SaPayload([Proposal(1, ProtocolId.IKE, b"", [
        Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
        Transform(TransformType.DH, DhId.MODP_2048),
    ])])
    expected = bytes.fromhex(
        "0000001c 01010002"          # last proposal, length 28, #1 IKE, SPI size 0, 2 transforms
        "0300000c 0100000c 800e0080"  # more, length 12, ENCR AES_CBC, key length TV 128
        "00000008 0400000e"           # last, length 8, DH 14
    )
    assert _body(sa) == expected
    assert _parse(PayloadType.SA, expected) == sa


def test_sa_unknown_attributes_skipped() -> None:
    body = bytes.fromhex(
        "00000020 01010001"
        "00000018 0100000c"
        "80070001"        # unknown TV attribute
        "00330004 deadbeef"  # unknown TLV attribute, 4 octets of value
        "800e0100"        # key length 256
    )
    sa = _parse(PayloadType.SA, body)
    assert isinstance(sa, SaPayload)
    assert sa.proposals[0].transforms == [Transform(TransformType.ENCR, EncrId.AES_CBC, 256)]


def test_sa_unknown_transform_type_and_protocol_kept_as_int() -> None:
    body = bytes.fromhex("00000010 01090001 00000008 06000001")
    sa = _parse(PayloadType.SA, body)
    assert isinstance(sa, SaPayload)
    assert sa.proposals[0].protocol == 9
    assert sa.proposals[0].transforms == [Transform(6, 1)]
    assert _body(sa) == body


def test_id_keeps_raw_body_as_received() -> None:
    body = b"\x02\xaa\xbb\xcc" + b"peer"  # non-zero RESERVED octets
    p = _parse(PayloadType.IDi, body)
    assert isinstance(p, IdPayload)
    assert (p.id_type, p.data, p.body) == (IdType.FQDN, b"peer", body)
    assert _body(p) == body


def test_id_peer_type_from_wire() -> None:
    p = _parse(PayloadType.ID_PEER, b"\x03\x00\x00\x00bob@example.com")
    assert isinstance(p, IdPayload) and p.ptype == PayloadType.ID_PEER


def test_unknown_noncritical_payload_kept() -> None:
    chain = bytes.fromhex("2b000008 01020304 00000005 41")  # type 99 -> V -> end
    payloads = wire.decode_payloads(chain, 99)
    assert payloads == [UnknownPayload(99, False, b"\x01\x02\x03\x04"), VendorIdPayload(b"A")]
    assert wire.encode_payloads(payloads) == chain


def test_unknown_critical_payload_rejected() -> None:
    with pytest.raises(ProtocolError) as ei:
        wire.decode_payloads(bytes.fromhex("00800008 01020304"), 99)
    assert ei.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert ei.value.data == bytes([99])


def test_critical_bit_ignored_for_known_payload() -> None:
    assert wire.decode_payloads(bytes.fromhex("00800005 41"), PayloadType.VENDOR_ID) == [
        VendorIdPayload(b"A")
    ]


MALFORMED_BODIES: list[tuple[str, int, str]] = [
    ("ke-short", PayloadType.KE, "0013"),
    ("id-short", PayloadType.IDi, "020000"),
    ("id-ipv4-wrong-length", PayloadType.IDi, "01000000 0a0000"),
    ("id-ipv6-wrong-length", PayloadType.IDr, "05000000 00000000"),
    ("auth-short", PayloadType.AUTH, "02"),
    ("cert-empty", PayloadType.CERT, ""),
    ("certreq-empty", PayloadType.CERTREQ, ""),
    ("nonce-short", PayloadType.NONCE, "00" * 15),
    ("nonce-long", PayloadType.NONCE, "00" * 257),
    ("notify-short", PayloadType.NOTIFY, "000040"),
    ("notify-spi-beyond", PayloadType.NOTIFY, "03044009 0102"),
    ("delete-count-mismatch", PayloadType.DELETE, "03040002 00000001"),
    ("delete-trailing", PayloadType.DELETE, "01000000 00"),
    ("ts-short", PayloadType.TSi, "010000"),
    ("ts-count-beyond", PayloadType.TSi, "02000000 07000010 0000ffff 00000000 ffffffff"),
    ("ts-v4-bad-length", PayloadType.TSi, "01000000 07000014 0000ffff 00000000 ffffffff 00000000"),
    ("ts-v6-bad-length", PayloadType.TSr, "01000000 08000010 0000ffff 00000000 ffffffff"),
    ("ts-selector-length-beyond", PayloadType.TSi, "01000000 07000040 0000ffff"),
    ("ts-selector-length-small", PayloadType.TSi, "01000000 07000002"),
    ("ts-trailing", PayloadType.TSi, "00000000 00"),
    ("cp-short", PayloadType.CP, "01"),
    ("cp-attr-beyond", PayloadType.CP, "01000000 00010008 0000"),
    ("cp-attr-truncated", PayloadType.CP, "01000000 0001"),
    ("sa-proposal-truncated", PayloadType.SA, "00000008 0101"),
    ("sa-proposal-length-beyond", PayloadType.SA, "00000030 01010000"),
    ("sa-proposal-length-small", PayloadType.SA, "00000004 01010000"),
    ("sa-bad-last-proposal", PayloadType.SA, "01000008 01010000"),
    ("sa-more-but-none", PayloadType.SA, "02000008 01010000"),
    ("sa-last-but-more", PayloadType.SA, "00000008 01010000 00000008 02010000"),
    ("sa-spi-beyond", PayloadType.SA, "00000008 01010800"),
    ("sa-transform-count", PayloadType.SA, "00000010 01010002 00000008 0100000c"),
    ("sa-transform-length", PayloadType.SA, "00000010 01010001 00000010 0100000c"),
    ("sa-transform-bad-last", PayloadType.SA, "00000010 01010001 01000008 0100000c"),
    ("sa-attr-truncated", PayloadType.SA, "00000012 01010001 0000000a 0100000c 800e"),
    ("sa-tlv-attr-beyond", PayloadType.SA, "00000014 01010001 0000000c 0100000c 00330009"),
]


@pytest.mark.parametrize("name,ptype,hexbody", MALFORMED_BODIES, ids=[n for n, _, _ in MALFORMED_BODIES])
def test_malformed_body(name: str, ptype: int, hexbody: str) -> None:
    with pytest.raises(DecodeError):
        _parse(ptype, bytes.fromhex(hexbody))


MALFORMED_CHAINS: list[tuple[str, int, str]] = [
    ("header-truncated", PayloadType.VENDOR_ID, "0000"),
    ("length-below-4", PayloadType.VENDOR_ID, "00000003"),
    ("length-beyond", PayloadType.VENDOR_ID, "00000010 41"),
    ("next-but-nothing", PayloadType.VENDOR_ID, "2b000005 41"),
    ("trailing-after-last", PayloadType.VENDOR_ID, "00000005 41 00"),
]


@pytest.mark.parametrize("name,first,hexchain", MALFORMED_CHAINS, ids=[n for n, _, _ in MALFORMED_CHAINS])
def test_malformed_chain(name: str, first: int, hexchain: str) -> None:
    with pytest.raises(DecodeError):
        wire.decode_payloads(bytes.fromhex(hexchain), first)


def test_push_rejects_inconsistent_values() -> None:
    with pytest.raises(LocalError):
        _body(DeletePayload(ProtocolId.ESP, [b"\x00" * 4, b"\x00" * 8]))
    with pytest.raises(LocalError):
        _body(TsPayload(PayloadType.TSi, [TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 0, bytes(16), bytes(4))]))
    with pytest.raises(LocalError):
        wire.encode_payloads([VendorIdPayload(bytes(70000))])


def test_registry_covers_all_plain_payload_types() -> None:
    expected = {int(t) for t in PayloadType} - {0, PayloadType.SK, PayloadType.SKF}
    assert set(wire.REGISTRY) == expected
