"""A client's NAT behaviour, reported to its mediation server in a private-use Notify (our extension).

The client measures its NAT with STUN (RFC 5780, mediation_client/natdisc.py) and tells the server in
an INFORMATIONAL exchange on the mediation SA, carrying N(IKEME_NAT_BEHAVIOUR) from the private-use
range of status types (RFC 7296 §3.10.1: 40960-65535, above strongSwan's own 40961-40969). It is sent
only to a server that announced our implementation's Vendor ID (core_ike/me/endpoints.py
IMPL_VENDOR_ID) in its IKE_SA_INIT response, which our server does only toward our own clients: a
strongSwan peer or server never sees it. The data is the short text summary
("mapping EIM, filtering APDF, port preserving, no hairpinning"), printable ASCII, at most 255 octets.
"""

from __future__ import annotations

from collections.abc import Callable

from ..codec.message import Message
from ..codec.payloads import NotifyPayload
from ..constants import ExchangeType
from ..ike.context import IkeSaView, Status, Task

IKEME_NAT_BEHAVIOUR = 57344  # RFC 7296 §3.10.1 private use (status type)
MAX_TEXT = 255


# every octet outside printable ASCII (0x20-0x7E) becomes "?"
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x3F for b in range(256))


def encode_nat(text: str) -> bytes:
    return text.encode("ascii", "replace")[:MAX_TEXT].translate(_PRINTABLE)


def decode_nat(data: bytes) -> str | None:
    """The reported text, or None when it is not printable ASCII of at most MAX_TEXT octets."""
    if not data or len(data) > MAX_TEXT or not data.isascii():
        return None
    text = data.decode("ascii")
    return text if text.isprintable() else None


def nat_notify(msg: Message) -> bytes | None:
    for p in msg.payloads:
        if isinstance(p, NotifyPayload) and int(p.type) == IKEME_NAT_BEHAVIOUR:
            return p.data
    return None


class NatReport(Task):
    """Client: INFORMATIONAL request carrying N(IKEME_NAT_BEHAVIOUR)."""

    exchange = ExchangeType.INFORMATIONAL
    name = "IKEME_NAT_BEHAVIOUR"

    def __init__(self, text: str) -> None:
        self.text = text

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads.append(NotifyPayload(IKEME_NAT_BEHAVIOUR, encode_nat(self.text)))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        return Status.DONE


class NatReportResponder(Task):
    """Server: takes the report of a peer (malformed text is ignored, the exchange is answered anyway)."""

    exchange = ExchangeType.INFORMATIONAL
    name = "IKEME_NAT_BEHAVIOUR"

    def __init__(self, on_report: Callable[[IkeSaView, str], None]) -> None:
        self.on_report = on_report

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        data = nat_notify(msg)
        text = decode_nat(data) if data is not None else None
        if text is not None:
            self.on_report(sa, text)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        return None
