"""Connectivity-check messages ([ME] §5.1, docs/protocol.md §7.1-§7.3).

A check is a plaintext INFORMATIONAL with SPIs 0/0, Message ID = the sender's pair id, flags I
(request) or R (response), and exactly three notifies in this order: ME_CONNECTID, ME_ENDPOINT,
ME_CONNECTAUTH. No SK payload. The 4-octet non-ESP marker is added by the transport, not here.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from ..codec.message import Message, decode_message
from ..codec.payloads import NotifyPayload, Payload
from ..constants import (
    IKE_VERSION,
    ExchangeType,
    HeaderFlag,
    MeEndpointType,
    NotifyType,
    PayloadType,
)
from ..errors import DecodeError, ProtocolError
from .endpoints import Addr, Endpoint, addressless_endpoint, decode_endpoint, encode_endpoint, make_endpoint

log = logging.getLogger("core_ike.me")

ZERO_SPI = b"\x00" * 8
MAC_LEN = 20  # SHA-1: ME_CONNECTAUTH is exactly 20 octets (docs/protocol.md §2.2)


class KeyRule(Enum):
    """Which ME_CONNECTKEY MACs a check (docs/protocol.md §7.2: draft and strongSwan differ).

    SENDER: strongSwan (`build_signature`): every check is MACed with the sender's own key and
    verified with the peer's key. DRAFT: [ME] §5.1.1, the key provided by the check's responder
    (requests: the receiver's key; responses: the sender's key). Only SENDER interoperates.
    """

    SENDER = "sender"
    DRAFT = "draft"


def mac_key(is_response: bool, sending: bool, own_key: bytes, peer_key: bytes, rule: KeyRule) -> bytes:
    """The key for a check we send (`sending`) or verify, per the rule."""
    if rule is KeyRule.SENDER:
        return own_key if sending else peer_key
    # [ME] §5.1.1: always the key of the side answering the check
    if is_response:
        return own_key if sending else peer_key
    return peer_key if sending else own_key


def compute_mac(message_id: int, connect_id: bytes, endpoint_data: bytes, key: bytes) -> bytes:
    """[ME] §5.1.1: SHA1(MID(4, big-endian) | CONNECTID | ME_ENDPOINT data | key).

    Plain SHA-1 with a secret suffix (not HMAC), over notification data only, exactly as carried.
    """
    return hashlib.sha1(message_id.to_bytes(4, "big") + connect_id + endpoint_data + key).digest()


@dataclass(frozen=True)
class Check:
    """A parsed or to-be-sent check; `endpoint_data` are the exact ME_ENDPOINT octets."""

    is_response: bool
    message_id: int
    connect_id: bytes
    endpoint_data: bytes
    auth: bytes

    @cached_property
    def endpoint(self) -> Endpoint:  # decoded once: validated on receipt, read again by the answer (§7.4)
        return decode_endpoint(self.endpoint_data)

    def verify(self, key: bytes) -> bool:
        expected = compute_mac(self.message_id, self.connect_id, self.endpoint_data, key)
        return len(self.auth) == MAC_LEN and _consteq(expected, self.auth)


def _consteq(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def request_endpoint() -> Endpoint:
    """docs/protocol.md §7.1: request ME_ENDPOINT = address-less PEER_REFLEXIVE, priority 0x0080FFFF."""
    return addressless_endpoint(MeEndpointType.PEER_REFLEXIVE)


def response_endpoint(observed_src: Addr, priority: int) -> Endpoint:
    """docs/protocol.md §7.1, §7.4 step 3: PEER_REFLEXIVE with the request's observed source, its priority."""
    return make_endpoint(MeEndpointType.PEER_REFLEXIVE, observed_src[0], observed_src[1], priority=priority)


def make_check(is_response: bool, message_id: int, connect_id: bytes, endpoint: Endpoint,
               key: bytes) -> Check:
    data = encode_endpoint(endpoint)
    return Check(is_response, message_id, connect_id, data, compute_mac(message_id, connect_id, data, key))


def check_to_message(check: Check) -> Message:
    """docs/protocol.md §7.1: SPIs 0/0, INFORMATIONAL, MID = pair id, I for requests / R for responses."""
    flags = HeaderFlag.RESPONSE if check.is_response else HeaderFlag.INITIATOR
    payloads: list[Payload] = [
        NotifyPayload(NotifyType.ME_CONNECTID, check.connect_id),
        NotifyPayload(NotifyType.ME_ENDPOINT, check.endpoint_data),
        NotifyPayload(NotifyType.ME_CONNECTAUTH, check.auth),
    ]
    return Message(spi_i=ZERO_SPI, spi_r=ZERO_SPI, exchange=ExchangeType.INFORMATIONAL, flags=flags,
                   message_id=check.message_id, payloads=payloads)


# a check's fixed layout (docs/protocol.md §7.1): the IKE header (RFC 7296 3.1), then three Notify payloads
# (RFC 7296 3.10: generic header, protocol 0, no SPI, type, data); the same octets `encode_message` makes
# of `check_to_message`, written directly in one pack per check: each check, and each answer on the setup's
# critical path, is one. One Struct per (connect ID, endpoint, auth) lengths, all three bounded on receipt
# (docs/protocol.md §4.2, §7.1): a handful of layouts
_ZERO_SPIS = ZERO_SPI * 2
_NOTIFY_HEADER_LEN = 8
_LAYOUTS: dict[tuple[int, int, int], struct.Struct] = {}
_NOTIFY, _NONE, _IKE_INFORMATIONAL = int(PayloadType.NOTIFY), int(PayloadType.NONE), int(ExchangeType.INFORMATIONAL)
_INITIATOR, _RESPONSE = int(HeaderFlag.INITIATOR), int(HeaderFlag.RESPONSE)
_N_CONNECTID, _N_ENDPOINT, _N_CONNECTAUTH = (int(NotifyType.ME_CONNECTID), int(NotifyType.ME_ENDPOINT),
                                             int(NotifyType.ME_CONNECTAUTH))


def _layout(lens: tuple[int, int, int]) -> struct.Struct:
    st = _LAYOUTS[lens] = struct.Struct("!16sBBBBII" + "".join(f"BBHBBH{n}s" for n in lens))
    return st


def encode_check(check: Check) -> bytes:
    """The IKE message octets (no non-ESP marker)."""
    cid, ep, auth = check.connect_id, check.endpoint_data, check.auth
    lens = (len(cid), len(ep), len(auth))
    st = _LAYOUTS.get(lens) or _layout(lens)
    h = _NOTIFY_HEADER_LEN
    return st.pack(_ZERO_SPIS, _NOTIFY, IKE_VERSION, _IKE_INFORMATIONAL, _RESPONSE if check.is_response else _INITIATOR,
                   check.message_id, st.size,
                   _NOTIFY, 0, h + lens[0], 0, 0, _N_CONNECTID, cid,
                   _NOTIFY, 0, h + lens[1], 0, 0, _N_ENDPOINT, ep,
                   _NONE, 0, h + lens[2], 0, 0, _N_CONNECTAUTH, auth)


# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook
_INFORMATIONAL, _RESPONSE_FLAG = ExchangeType.INFORMATIONAL, int(HeaderFlag.RESPONSE)  # int: no Flag.__rand__
_CONNECTID, _ENDPOINT, _CONNECTAUTH = NotifyType.ME_CONNECTID, NotifyType.ME_ENDPOINT, NotifyType.ME_CONNECTAUTH


def is_connectivity_check(msg: Message) -> bool:
    """SPIs 0/0, INFORMATIONAL, plaintext, carries ME_CONNECTID: unprotected error notifies are no checks
    (docs/protocol.md §7.3)."""
    if msg.spi_i != ZERO_SPI or msg.spi_r != ZERO_SPI or msg.exchange != _INFORMATIONAL:
        return False
    if msg.encrypted:
        return False
    return any(isinstance(p, NotifyPayload) and p.type == _CONNECTID for p in msg.payloads)


def check_from_message(msg: Message) -> Check:
    """Validate a received check; DecodeError(reason) means drop silently ([ME] §5.2)."""
    if msg.spi_i != ZERO_SPI or msg.spi_r != ZERO_SPI:
        raise DecodeError("check with non-zero SPIs")
    if msg.exchange != _INFORMATIONAL or msg.encrypted:
        raise DecodeError("not a plaintext INFORMATIONAL")
    found: dict[int, bytes] = {}
    for p in msg.payloads:
        if not isinstance(p, NotifyPayload):
            continue  # non-notify payloads are ignored (docs/protocol.md §7.1)
        t = p.type
        if t != _CONNECTID and t != _ENDPOINT and t != _CONNECTAUTH:  # noqa: PLR1714 - no set built per payload
            continue
        if t in found:
            log.info("ignoring duplicate %s in connectivity check", NotifyType(t).name)
            continue
        found[t] = p.data
    cid, ep_data, auth = found.get(_CONNECTID), found.get(_ENDPOINT), found.get(_CONNECTAUTH)
    if cid is None or ep_data is None or auth is None:
        missing = next(t for t in (_CONNECTID, _ENDPOINT, _CONNECTAUTH) if t not in found)
        raise DecodeError(f"connectivity check without {missing.name}")
    is_response = bool(msg.flags & _RESPONSE_FLAG)
    check = Check(is_response, msg.message_id, cid, ep_data, auth)
    try:
        ep = check.endpoint
    except ProtocolError as exc:
        raise DecodeError(f"connectivity check: {exc}") from None
    if is_response and ep.address is None:
        # the response has no mapped address to learn: refused (docs/protocol.md §11.12)
        raise DecodeError("connectivity check response without a mapped address")
    return check


def decode_check(data: bytes | Message) -> Check:
    msg = data if isinstance(data, Message) else decode_message(data)
    return check_from_message(msg)
