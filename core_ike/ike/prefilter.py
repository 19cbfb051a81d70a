"""The responder's pre-filter: decisions on the raw datagram before anything is decoded.

A flood of IKE_SA_INIT requests from spoofed addresses must cost the responder little per datagram,
or the socket queue overflows and legitimate requests are lost with the flood. So the engine checks the
fixed IKE header on the raw bytes (RFC 7296 3.1), limits the IKE_SA_INIT requests of each source
address while COOKIEs are demanded (`SourceLimiter`), and decides on the COOKIE (RFC 7296 2.6) from a
walk over the generic payload headers up to the Nonce (`scan_init`), answering with a COOKIE built
from bytes (`cookie_reply`) without decoding the message. docs/operations.md, "Floods".
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Container

from ..codec.message import Message
from ..codec.wire import NONCE_MAX, NONCE_MIN
from ..constants import IKE_HEADER_LEN, IKE_VERSION, ExchangeType, HeaderFlag, NotifyType, PayloadType

# RFC 7296 3.1: SPIi and SPIr (as numbers: zero tests without slicing), Next Payload, Version, Exchange
# Type, Flags, Message ID, Length
HEADER = struct.Struct("!QQBBBBII")
_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2
# a Notify's generic header and its Protocol ID, SPI Size, Notify Message Type (RFC 7296 3.2, 3.10)
_NOTIFY_HEAD = struct.Struct("!BBHBBH")
_NOTIFY_TYPE, _NONCE_TYPE, _COOKIE = int(PayloadType.NOTIFY), int(PayloadType.NONCE), int(NotifyType.COOKIE)
ZERO_SPI = bytes(8)
# plain ints: bit tests with IntFlag members run Python code
RESPONSE, INITIATOR, IKE_SA_INIT = int(HeaderFlag.RESPONSE), int(HeaderFlag.INITIATOR), int(ExchangeType.IKE_SA_INIT)
# the COOKIE notify is the first payload (RFC 7296 2.6) and the Nonce follows SA and KE: a request
# whose Nonce is not among its first payloads is not worth a longer walk
SCAN_MAX = 16
# a COOKIE answer: IKE header up to the flags, for an IKE_SA_INIT response (RFC 7296 2.6)
_REPLY_HEAD = ZERO_SPI + bytes((PayloadType.NOTIFY, IKE_VERSION, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE))
_REPLY_TAIL = struct.Struct("!IBBHBBH")  # Length; Notify generic header; Protocol ID, SPI Size, type
_COOKIE_REPLY_LEN = IKE_HEADER_LEN + 8


def scan_init(data: bytes, ptype: int) -> tuple[bytes, bytes] | None:
    """(COOKIE data, Nonce data) of an IKE_SA_INIT request from its generic payload headers alone.

    The COOKIE data is b"" unless the first payload is N(COOKIE). None when the chain is broken before
    the Nonce, has no Nonce among its first SCAN_MAX payloads, or the Nonce length is outside 16..256
    (RFC 7296 3.9): such a request cannot become an IKE_SA.
    """
    pos, end = IKE_HEADER_LEN, len(data)
    cookie = b""
    unpack = _GENERIC.unpack_from
    if ptype == _NOTIFY_TYPE and end >= pos + 8:
        _n, _c, length, _proto, spi_size, ntype = _NOTIFY_HEAD.unpack_from(data, pos)
        if ntype == _COOKIE and 8 + spi_size <= length and pos + length <= end:
            cookie = data[pos + 8 + spi_size : pos + length]
    for _ in range(SCAN_MAX):
        if not ptype or pos + 4 > end:
            return None
        nxt, _crit, length = unpack(data, pos)
        if length < 4 or pos + length > end:
            return None
        if ptype == _NONCE_TYPE:
            if not NONCE_MIN <= length - 4 <= NONCE_MAX:
                return None
            return cookie, data[pos + 4 : pos + length]
        pos += length
        ptype = nxt
    return None


def spi_known(data: bytes, flags: int, exchange: int, sas: Container[bytes]) -> bool:
    """Is the IKE_SA of this message (not a new IKE_SA_INIT request) one of `sas` (by our SPI)? Our SPI
    is SPIr in messages from the original initiator, SPIi in the others (RFC 7296 3.1, 2.6); an
    IKE_SA_INIT response may be for an initiator whose SA is still filed under its SPIi alone."""
    ours = data[8:16] if flags & INITIATOR else data[:8]
    if ours in sas:
        return True
    return exchange == IKE_SA_INIT and data[:8] in sas


def header_message(data: bytes) -> Message:
    """A Message with the fixed header of `data` and no payloads (for answers that need only the
    header: INVALID_IKE_SPI, RFC 7296 2.21.4)."""
    _i, _r, _first, _version, exchange, flags, mid, _length = HEADER.unpack_from(data)
    return Message(spi_i=data[:8], spi_r=data[8:16], exchange=exchange, flags=HeaderFlag(flags), message_id=mid,
                   payloads=[])


def packed_ip(ip: str) -> bytes:
    """The address octets of `ip` (IPi of RFC 7296 2.6); a scope (`fe80::1%eth0`) is left out."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    return socket.inet_pton(socket.AF_INET, ip)


def cookie_value(ni: bytes, ip: bytes, spi_i: bytes, version: int, secret: bytes) -> bytes:
    """RFC 7296 2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)."""
    return bytes((version & 0xFF,)) + hashlib.sha256(ni + ip + spi_i + secret).digest()


def cookie_reply(spi_i: bytes, message_id: bytes, cookie: bytes) -> bytes:
    """The IKE_SA_INIT response carrying only N(COOKIE) (RFC 7296 2.6), as encode_message builds it."""
    n = len(cookie)
    return (spi_i + _REPLY_HEAD + message_id
            + _REPLY_TAIL.pack(_COOKIE_REPLY_LEN + n, 0, 0, 8 + n, 0, 0, NotifyType.COOKIE) + cookie)


class SourceLimiter:
    """At most `rate` datagrams per second from one source (a burst of one second's worth), as a
    generic cell rate algorithm: one float per source, the time its bucket is full again. IPv6
    sources count per /64 (what one subscriber gets). At most `max_sources` are remembered; when
    full, the ones whose bucket is full again are forgotten, and all of them if that frees too little,
    so a flood from spoofed addresses cannot grow it."""

    def __init__(self, rate: float, max_sources: int = 16384) -> None:
        self.rate = rate
        self.max_sources = max_sources
        self._tat: dict[str | bytes, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def allow(self, ip: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        key: str | bytes = ip if ":" not in ip else packed_ip(ip)[:8]
        tat = self._tat.get(key)
        if tat is None or tat < now:
            if tat is None and len(self._tat) >= self.max_sources:
                self._forget(now)
            tat = now
        interval = 1.0 / self.rate
        if tat - now > 1.0 - interval:  # the burst (one second's worth) is used up
            return False
        self._tat[key] = tat + interval
        return True

    def _forget(self, now: float) -> None:
        live = {k: t for k, t in self._tat.items() if t > now}
        self._tat = live if len(live) < self.max_sources // 2 else {}
