"""The codec's per-message shortcuts (core_ike/codec/wire.py: parsed SA payloads kept by their octets;
core_ike/codec/rules.py: payload sequences a rule accepted) give the same results as the full paths:
equal values, independent lists, the same errors, and a rule violation is never taken for an accepted
sequence."""

from __future__ import annotations

import pytest

from core_ike.codec import rules, sawire, wire
from core_ike.codec.message import Message, decode_message, encode_message
from core_ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from core_ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId
from core_ike.crypto.proposals import parse_proposals
from core_ike.errors import DecodeError, ProtocolError


def _init(props: str = "aes128gcm16-prfsha256-x25519", extra: list | None = None) -> bytes:
    msg = Message(b"\x11" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                  [SaPayload(parse_proposals(props, ProtocolId.IKE)), KePayload(31, b"\x01" * 32),
                   NoncePayload(b"\x02" * 32), *(extra or [])])
    return encode_message(msg)[0]


def test_sa_payloads_from_the_cache_are_equal_and_independent() -> None:
    sawire._SA_CACHE.clear()
    a, b = decode_message(_init()), decode_message(_init())
    sa_a, sa_b = a.first(SaPayload), b.first(SaPayload)
    assert sa_a is not None and sa_b is not None
    assert sa_a == sa_b and sa_a is not sa_b and sa_a.proposals is not sa_b.proposals
    sa_a.proposals.clear()  # one message's list is its own
    assert decode_message(_init()).first(SaPayload) == sa_b
    # a different SA payload is parsed on its own
    other = decode_message(_init("aes256-sha256-modp2048")).first(SaPayload)
    assert other is not None and other != sa_b


def test_the_sa_cache_is_bounded() -> None:
    sawire._SA_CACHE.clear()
    for i in range(sawire.SA_CACHE_MAX + 5):
        msg = Message(b"\x11" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                      [SaPayload([p.__class__(i % 250 + 1, p.protocol, p.spi, p.transforms)
                                  for p in parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)]),
                       KePayload(31, b"\x01" * 32), NoncePayload(b"\x02" * 32)])
        decode_message(encode_message(msg)[0])
    assert len(sawire._SA_CACHE) <= sawire.SA_CACHE_MAX


def test_a_malformed_sa_payload_gives_the_general_error() -> None:
    data = bytearray(_init())
    sa_at = 28  # the SA payload follows the header; its first proposal's length field is garbled
    data[sa_at + 4 + 2: sa_at + 4 + 4] = b"\xff\xff"
    with pytest.raises(DecodeError, match="proposal length 65535 invalid"):
        decode_message(bytes(data))


def test_rules_accept_the_same_sequence_again_and_still_refuse_a_bad_one() -> None:
    rules._ACCEPTED.clear()
    good = decode_message(_init())
    rules.check_rules(good)
    rules.check_rules(decode_message(_init()))  # from the set of accepted sequences
    assert len(rules._ACCEPTED) == 1
    two_nonces = decode_message(_init(extra=[NoncePayload(b"\x03" * 32)]))
    for _ in range(2):
        with pytest.raises(ProtocolError, match="occurs 2 times"):
            rules.check_rules(two_nonces)
    with_notify = decode_message(_init(extra=[NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, b"\0" * 20)]))
    rules.check_rules(with_notify)
    assert with_notify.payloads[-1].ptype == PayloadType.NOTIFY
    assert len(rules._ACCEPTED) == 2


def test_cert_and_certreq_shortcuts_are_the_general_codec() -> None:
    """RFC 7296 3.6 / 3.7: Encoding(1) | data, both ways; a body without the Encoding octet is refused."""
    from core_ike.buffer import Buffer
    from core_ike.codec.payloads import CertPayload, CertReqPayload

    for p in (CertPayload(4, b"\x30\x82certificate"), CertReqPayload(4, b"\xaa" * 40), CertPayload(4, b"")):
        buf = Buffer()
        wire.REGISTRY[int(p.ptype)].push(buf, p)  # the general codec
        assert wire.encode_payloads([p]) == bytes((0, 0, 0, 4 + len(buf.getvalue()))) + buf.getvalue()
        assert wire.decode_payloads(wire.encode_payloads([p]), int(p.ptype)) == [p]
    for ptype in (PayloadType.CERT, PayloadType.CERTREQ):
        with pytest.raises(DecodeError, match="body too short"):
            wire.decode_payloads(bytes((0, 0, 0, 4)), ptype)


def test_an_sa_payload_sends_the_octets_it_stands_for() -> None:
    """A decoded SA payload keeps its body (the key of the responder's negotiation cache); the encoder
    sends `raw` when set, and the general codec the proposals."""
    data = _init()
    sa = decode_message(data).first(SaPayload)
    assert sa is not None and sa.raw is not None
    assert wire.encode_payloads([sa])[4:] == sa.raw == wire.encode_payloads([SaPayload(sa.proposals)])[4:]
    assert sa == SaPayload(sa.proposals)  # raw is not part of the value


def test_child_sa_offers_share_a_parse_and_keep_their_own_spis() -> None:
    """An ESP offer differs from the last one in its SPIs (RFC 7296 3.3.1): parsed once by its shape,
    each payload with its own SPIs, equal to the general decoding; malformed bodies give its errors."""
    from core_ike.buffer import Buffer

    def body(spis: list[bytes], text: str = "aes128gcm16-aes256gcm16,aes128-sha256-esn") -> bytes:
        props = parse_proposals(text, ProtocolId.ESP)
        for p, spi in zip(props, spis, strict=True):
            p.spi = spi
        buf = Buffer()
        sawire.push_sa(buf, SaPayload(props))
        return buf.getvalue()

    sawire._SA_CACHE.clear()
    seen = []
    for spis in ([b"\x01\x02\x03\x04", b"\x01\x02\x03\x04"], [b"\xaa" * 4, b"\xbb" * 4], [b"\xaa" * 4, b""]):
        data = body(spis)
        got = sawire.pull_sa_body(data)
        assert got == sawire.pull_sa(Buffer(data)) and got.raw == data
        assert [p.spi for p in got.proposals] == spis
        assert wire.decode_payloads(bytes((0, 0, 0, 4 + len(data))) + data, PayloadType.SA) == [got]
        seen.append(got)
    assert len(sawire._SA_CACHE) == 2  # the last one's second SPI has another size: another shape
    assert seen[0].shape == seen[1].shape != seen[2].shape
    seen[0].proposals[0].spi = b"\x00" * 4  # one payload's proposals are its own
    assert seen[1].proposals[0].spi == b"\xaa" * 4
    good = body([b"\x01\x02\x03\x04"] * 2)
    for bad, error in ((good[:-1], "proposal length"), (good + b"\x00", "octets after the last proposal"),
                       (bytes((1,)) + good[1:], "neither 0 nor 2"), (good[:8], "proposal length"),
                       (good[:6] + b"\x40" + good[7:], "SPI size 64 exceeds")):
        for _ in range(2):
            with pytest.raises(DecodeError, match=error):
                sawire.pull_sa_body(bad)
