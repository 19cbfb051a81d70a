"""Answers the responder sends without IKE_SA state (RFC 7296 2.6, 2.21): an error notify to an
IKE_SA_INIT request, and INVALID_IKE_SPI to a request for an IKE_SA it does not know (2.21.4), the
latter at most `rate` per second (a token bucket): spoofed requests cannot make it send more."""

from __future__ import annotations

from ..codec.message import Message, encode_message
from ..codec.payloads import NotifyPayload
from ..constants import ExchangeType, HeaderFlag, NotifyType
from ..errors import ProtocolError


def error_response(request: Message, notify: int, data: bytes = b"") -> bytes:
    """RFC 7296 2.6, 2.21: N(notify) answering IKE_SA_INIT request `request` (SPIr zero, no state)."""
    resp = Message(spi_i=request.spi_i, spi_r=b"\x00" * 8, exchange=request.exchange, flags=HeaderFlag.RESPONSE,
                   message_id=request.message_id, payloads=[NotifyPayload(notify, data)])
    return encode_message(resp)[0]


def invalid_spi_response(request: Message) -> bytes:
    """RFC 7296 2.21.4 / 1.5: unprotected INFORMATIONAL response with N(INVALID_IKE_SPI)."""
    flags = HeaderFlag.RESPONSE | (HeaderFlag.NONE if request.is_initiator else HeaderFlag.INITIATOR)
    resp = Message(spi_i=request.spi_i, spi_r=request.spi_r, exchange=ExchangeType.INFORMATIONAL, flags=flags,
                   message_id=request.message_id, payloads=[NotifyPayload(NotifyType.INVALID_IKE_SPI)])
    return encode_message(resp)[0]


def header_error_request(data: bytes, e: ProtocolError) -> Message | None:
    """The IKE_SA_INIT request whose header-level error `e` (INVALID_MAJOR_VERSION, an unsupported critical
    payload) is answered; None when `data` is no such request or `e` carries no notify."""
    if e.notify is None or len(data) < 28 or data[18] != ExchangeType.IKE_SA_INIT or data[19] & 0x20:
        return None
    return Message(spi_i=data[:8], spi_r=b"\x00" * 8, exchange=data[18], flags=HeaderFlag.NONE,
                   message_id=int.from_bytes(data[20:24], "big"), payloads=[])


class TokenBucket:
    __slots__ = ("rate", "refill", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.refill = 0.0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.refill) * self.rate)
        self.refill = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
