"""Connectivity-check messages: the known-answer vector of docs/protocol.md §7.2, byte-exact."""

from __future__ import annotations

import pytest

from core_ike.codec.message import decode_message, encode_message
from core_ike.errors import DecodeError
from core_ike.me.checks import (
    KeyRule,
    check_to_message,
    compute_mac,
    decode_check,
    encode_check,
    is_connectivity_check,
    mac_key,
    make_check,
    request_endpoint,
    response_endpoint,
)

CID = bytes.fromhex("deadbeef")
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))

REQUEST = bytes.fromhex(
    "00000000000000000000000000000000" "2920250800000001" "00000054"
    "2900000c" "0000a005" "deadbeef"
    "29000010" "0000a003" "0080ffff00020000"
    "0000001c" "0000a007" "4ccd44239690d18fad7883bdfb6fc61257395bbc")
RESPONSE = bytes.fromhex(
    "00000000000000000000000000000000" "2920252000000001" "00000058"
    "2900000c" "0000a005" "deadbeef"
    "29000014" "0000a003" "0080ffff01021194cb007101"
    "0000001c" "0000a007" "4d1cb1cf71ef9bdaf571dad8ad0f593203154232")


def test_known_answer_request() -> None:
    check = make_check(False, 1, CID, request_endpoint(), KEY_A)
    assert check.endpoint_data.hex() == "0080ffff00020000"
    assert check.auth.hex() == "4ccd44239690d18fad7883bdfb6fc61257395bbc"
    assert encode_check(check) == REQUEST


def test_known_answer_response() -> None:
    req = decode_check(REQUEST)
    check = make_check(True, req.message_id, CID,
                       response_endpoint(("203.0.113.1", 4500), req.endpoint.priority), KEY_B)
    assert check.auth.hex() == "4d1cb1cf71ef9bdaf571dad8ad0f593203154232"
    assert encode_check(check) == RESPONSE


def test_decode_and_verify_with_senders_key() -> None:
    req, resp = decode_check(REQUEST), decode_check(RESPONSE)
    assert not req.is_response and resp.is_response
    assert req.verify(KEY_A) and not req.verify(KEY_B)  # sender's own key (docs/protocol.md §7.2)
    assert resp.verify(KEY_B)
    assert resp.endpoint.addr == ("203.0.113.1", 4500)
    assert is_connectivity_check(decode_message(REQUEST))


def test_mac_is_over_received_octets() -> None:
    assert compute_mac(1, CID, bytes.fromhex("0080ffff00020000"), KEY_A).hex().startswith("4ccd4423")


def test_key_rules() -> None:
    own, peer = b"o" * 16, b"p" * 16
    assert mac_key(False, True, own, peer, KeyRule.SENDER) == own
    assert mac_key(False, False, own, peer, KeyRule.SENDER) == peer
    assert mac_key(False, True, own, peer, KeyRule.DRAFT) == peer  # request: receiver's key
    assert mac_key(True, True, own, peer, KeyRule.DRAFT) == own


def _replace(data: bytes, old: str, new: str) -> bytes:
    h = data.hex()
    assert old in h
    return bytes.fromhex(h.replace(old, new, 1))


@pytest.mark.parametrize(("data", "reason"), [
    # response without a mapped address (strongSwan would crash, docs/protocol.md §11.12)
    (_replace(_replace(RESPONSE, "29000014" "0000a003" "0080ffff01021194cb007101",
                       "29000010" "0000a003" "0080ffff00020000"), "00000058", "00000054"), "mapped"),
    (_replace(REQUEST, "0000a005", "0000a00f"), "ME_CONNECTID"),  # connect id notify missing
    (_replace(REQUEST, "0080ffff00020000", "0080ffff00070000"), "invalid type"),
    (_replace(REQUEST, "2920250800000001" "00000054", "2920250800000001" "00000054")[:16]
     + b"\x00" * 0, "truncated"),
])
def test_malformed_checks_dropped(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError):
        decode_check(data)


@pytest.mark.parametrize("cid", [bytes([7]) * 4, bytes(range(16)), bytes(range(8))])
@pytest.mark.parametrize("endpoint", [request_endpoint(), response_endpoint(("203.0.113.1", 4500), 0x7EFFFFFF),
                                      response_endpoint(("2001:db8::1", 61000), 1)])
@pytest.mark.parametrize("is_response", [False, True])
def test_encode_check_writes_the_octets_of_the_general_encoder(cid: bytes, endpoint, is_response: bool) -> None:  # type: ignore[no-untyped-def]
    check = make_check(is_response, 0xFFFFFFFE if is_response else 3, cid, endpoint, KEY_A)
    assert encode_check(check) == encode_message(check_to_message(check))[0]
    if not (is_response and endpoint.address is None):  # such a response is refused (docs/protocol.md §11.12)
        assert decode_check(encode_check(check)) == check
