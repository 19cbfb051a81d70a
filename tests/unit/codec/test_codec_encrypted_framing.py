"""The SK (RFC 7296 3.14) and SKF (RFC 7383 2.5) payload framing of decode_message: what is kept of an
accepted one and each malformed header it refuses, with the reason."""

from __future__ import annotations

import struct

import pytest

from core_ike.codec.message import decode_message
from core_ike.codec.payloads import SkfPayload, SkPayload
from core_ike.errors import DecodeError

SPI_I, SPI_R = bytes(range(1, 9)), bytes(range(11, 19))
SK, SKF, IDI = 46, 53, 35


def _datagram(first: int, payload: bytes) -> bytes:
    """An IKE_AUTH request (RFC 7296 3.1 header, Message ID 1) whose chain starts with `first`."""
    return SPI_I + SPI_R + struct.pack("!BBBBII", first, 0x20, 35, 0x08, 1, 28 + len(payload)) + payload


def _generic(nxt: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("!BBH", nxt, 0, 4 + len(body) if length is None else length) + body


def test_sk_keeps_the_prefix_and_the_body() -> None:
    body = bytes(range(40))
    data = _datagram(SK, _generic(IDI, body))
    sk = decode_message(data).sk
    assert isinstance(sk, SkPayload)
    assert (sk.first_inner, sk.prefix, sk.body) == (IDI, data[:32], body)


def test_skf_keeps_its_number_total_prefix_and_body() -> None:
    body = bytes(range(40))
    data = _datagram(SKF, _generic(IDI, struct.pack("!HH", 1, 3) + body))
    skf = decode_message(data).sk
    assert isinstance(skf, SkfPayload)
    assert (skf.first_inner, skf.number, skf.total, skf.prefix, skf.body) == (IDI, 1, 3, data[:36], body)
    later = decode_message(_datagram(SKF, _generic(0, struct.pack("!HH", 3, 3) + body))).sk
    assert isinstance(later, SkfPayload) and (later.number, later.total) == (3, 3)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x23\x00", "payload header truncated: 2 octets at offset 28"),
    (_generic(IDI, b"", length=3), "payload length 3 < 4 at offset 28"),
    (_generic(IDI, bytes(8), length=13), "payload length 13 at offset 28 exceeds the 12 octets left"),
    (_generic(IDI, bytes(8), length=10), "2 octets after the encrypted payload \\(type 46\\); it must be last"),
])
def test_a_broken_sk_header_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_message(_datagram(SK, payload))


@pytest.mark.parametrize(("payload", "reason"), [
    (_generic(IDI, b"\x00\x01"), "SKF payload body of 2 octets lacks fragment number and total"),
    (_generic(IDI, struct.pack("!HH", 0, 2) + bytes(8)), "SKF fragment 0 invalid for total 2"),
    (_generic(IDI, struct.pack("!HH", 3, 2) + bytes(8)), "SKF fragment 3 invalid for total 2"),
    (_generic(IDI, struct.pack("!HH", 2, 2) + bytes(8)), "SKF fragment 2 has Next Payload 35; only fragment 1 may"),
    (_generic(IDI, struct.pack("!HH", 1, 2) + bytes(8), length=14), "2 octets after the encrypted payload"),
])
def test_a_broken_skf_header_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_message(_datagram(SKF, payload))
