"""The responder's pre-filter: decisions on the raw datagram before anything is decoded.

A flood of IKE_SA_INIT requests from spoofed addresses must cost the responder little per datagram,
or the socket queue overflows and legitimate requests are lost with the flood. So the engine checks the
fixed IKE header on the raw bytes (RFC 7296 3.1), limits the IKE_SA_INIT requests of each source
address while COOKIEs are demanded (`SourceLimiter`), and decides on the COOKIE (RFC 7296 2.6) from a
walk over the generic payload headers up to the Nonce (`scan_at`), answering with a COOKIE built
from bytes without decoding the message (`Prefilter`). The adapter may hand a whole batch of received
datagrams to `Prefilter.answer_batch`, which writes the COOKIE answers straight into its send batch
(core_ike/io/mmsg.py) and returns what the engine must still see. docs/operations.md, "Floods".
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Container, Sequence
from typing import Any, TypeVar

from ..codec.message import Message
from ..codec.payloads import NoncePayload, NotifyPayload
from ..codec.wire import NONCE_MAX, NONCE_MIN
from ..constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    NON_ESP_MARKER,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)

Addr = tuple[str, int]
log = logging.getLogger("core_ike.ike")

# RFC 7296 3.1: SPIi and SPIr (as numbers: zero tests without slicing), Next Payload, Version, Exchange
# Type, Flags, Message ID, Length
HEADER = struct.Struct("!QQBBBBII")
_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2
_ZERO8 = bytes(8)
# a Notify's generic header and its Protocol ID, SPI Size, Notify Message Type (RFC 7296 3.2, 3.10)
_NOTIFY_HEAD = struct.Struct("!BBHBBH")
_NOTIFY_TYPE, _NONCE_TYPE, _COOKIE = int(PayloadType.NOTIFY), int(PayloadType.NONCE), int(NotifyType.COOKIE)
ZERO_SPI = bytes(8)
# plain ints: bit tests with IntFlag members run Python code
RESPONSE, INITIATOR, IKE_SA_INIT = int(HeaderFlag.RESPONSE), int(HeaderFlag.INITIATOR), int(ExchangeType.IKE_SA_INIT)
_MAJOR = IKE_VERSION >> 4
# the COOKIE notify is the first payload (RFC 7296 2.6) and the Nonce follows SA and KE: a request
# whose Nonce is not among its first SCAN_MAX payloads is not worth a longer walk
SCAN_MAX = 16
COOKIE_LEN = 33  # our cookies: the version octet and a 256-bit MAC (core_ike/ike/cookies.py)
# a COOKIE answer: IKE header up to the flags, for an IKE_SA_INIT response (RFC 7296 2.6)
_REPLY_HEAD = ZERO_SPI + bytes((PayloadType.NOTIFY, IKE_VERSION, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE))
_REPLY_TAIL = struct.Struct("!IBBHBBH")  # Length; Notify generic header; Protocol ID, SPI Size, type
_COOKIE_REPLY_LEN = IKE_HEADER_LEN + 8
# a whole COOKIE answer of ours in one pack: SPIi, the fixed middle (up to the cookie's version octet), MAC
_REPLY = struct.Struct(f"8s{IKE_HEADER_LEN - 8 + 8 + 1}s{COOKIE_LEN - 1}s")
_REPLY_NATT = struct.Struct(f"4x{_REPLY.format}")  # after the non-ESP marker (RFC 3948 2.2): zeros
_MARKER = struct.Struct("=I")
_KEY4, _KEY6 = struct.Struct("!I"), struct.Struct("!Q")  # SourceLimiter keys from the address octets


def scan_at(data: Any, pos: int, end: int, ptype: int) -> tuple[int, int, int, int] | None:
    """Offsets (COOKIE data start, end, Nonce data start, end) in an IKE_SA_INIT request whose header
    starts at `pos` and whose datagram ends at `end`, from its generic payload headers alone.

    The COOKIE data is empty unless the first payload is N(COOKIE). None when the chain is broken before
    the Nonce, has no Nonce among its first SCAN_MAX payloads, or the Nonce length is outside 16..256
    (RFC 7296 3.9): such a request cannot become an IKE_SA.
    """
    pos += IKE_HEADER_LEN
    cs = ce = pos
    unpack = _GENERIC.unpack_from
    if ptype == _NOTIFY_TYPE and end >= pos + 8:
        _n, _c, length, _proto, spi_size, ntype = _NOTIFY_HEAD.unpack_from(data, pos)
        if ntype == _COOKIE and 8 + spi_size <= length and pos + length <= end:
            cs, ce = pos + 8 + spi_size, pos + length
    for _ in range(SCAN_MAX):
        if not ptype or pos + 4 > end:
            return None
        nxt, _crit, length = unpack(data, pos)
        if length < 4 or pos + length > end:
            return None
        if ptype == _NONCE_TYPE:
            if not NONCE_MIN <= length - 4 <= NONCE_MAX:
                return None
            return cs, ce, pos + 4, pos + length
        pos += length
        ptype = nxt
    return None


def scan_init(data: bytes, ptype: int) -> tuple[bytes, bytes] | None:
    """(COOKIE data, Nonce data) of an IKE_SA_INIT request (scan_at on a datagram of its own)."""
    found = scan_at(data, 0, len(data), ptype)
    if found is None:
        return None
    cs, ce, ns, ne = found
    return data[cs:ce], data[ns:ne]


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


def cookie_reply(spi_i: bytes, message_id: bytes, cookie: bytes) -> bytes:
    """The IKE_SA_INIT response carrying only N(COOKIE) (RFC 7296 2.6), as encode_message builds it."""
    n = len(cookie)
    return (spi_i + _REPLY_HEAD + message_id
            + _REPLY_TAIL.pack(_COOKIE_REPLY_LEN + n, 0, 0, 8 + n, 0, 0, NotifyType.COOKIE) + cookie)


def source_key(ip: str) -> int:
    """SourceLimiter's key of an address: the IPv4 address, or the /64 of an IPv6 one (what one
    subscriber gets), as a number (the batch path reads the same from the socket address)."""
    return int.from_bytes(packed_ip(ip)[:8], "big")


class SourceLimiter:
    """At most `rate` datagrams per second from one source (a burst of one second's worth), as a
    generic cell rate algorithm: one float per source, the time its bucket is full again. IPv6
    sources count per /64 (`source_key`). At most `max_sources` are remembered; when full, the ones
    whose bucket is full again are forgotten, and all of them if that frees too little, so a flood
    from spoofed addresses cannot grow it."""

    def __init__(self, rate: float, max_sources: int = 16384) -> None:
        self.rate = rate
        self.max_sources = max_sources
        self._tat: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def allow(self, ip: str, now: float) -> bool:
        return self.rate <= 0 or self.allow_key(source_key(ip), now)

    def allow_key(self, key: int, now: float) -> bool:
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


V = TypeVar("V")
# dict's own slots, called without super(): its object and lookups per call
_dict_set, _dict_del = dict.__setitem__, dict.__delitem__


class InitIndex(dict[tuple[bytes, Addr], V]):
    """The engine's index of IKE_SA_INIT requests it answered, (SPIi, peer) -> IKE_SA, which also counts
    its SPIi values: the batch pre-filter asks by SPIi alone, without making the peer's address string
    for every datagram of a flood."""

    __slots__ = ("spis",)

    def __init__(self) -> None:
        super().__init__()
        self.spis: dict[bytes, int] = {}

    def __setitem__(self, key: tuple[bytes, Addr], value: V) -> None:
        if key not in self:
            spis = self.spis
            spis[key[0]] = spis.get(key[0], 0) + 1
        _dict_set(self, key, value)

    def __delitem__(self, key: tuple[bytes, Addr]) -> None:
        _dict_del(self, key)
        spis = self.spis
        n = spis[key[0]] - 1
        if n:
            spis[key[0]] = n
        else:
            del spis[key[0]]

    def pop(self, key: tuple[bytes, Addr], *default: Any) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self.spis.clear()


class Prefilter:
    """The engine's pre-filter and COOKIE decisions (RFC 7296 3.1, 2.6, 2.21.4). `engine` is the
    core_ike.ike.engine.Engine it works for: its configuration, half-open counts, SA indexes,
    COOKIE secrets (`cookies`), counters, rate-limited log and output."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.limiter = SourceLimiter(self.cfg.init_rate_ip)  # IKE_SA_INITs per source under load
        self._middles: dict[int, bytes] = {}

    # ------------------------------------------------------------------ the COOKIE (RFC 7296 2.6)
    def demanded(self) -> bool:
        """Are COOKIEs demanded from every source (forced, or enough half-open IKE_SAs)? (Asked once a
        wake-up by the transport: Engine.half_open read without its property call.)"""
        cfg = self.cfg
        return bool(cfg.force_cookies or self.engine._half_open >= cfg.cookie_threshold)

    def needs_cookie(self, ip: str) -> bool:
        """`demanded()`, or enough half-open IKE_SAs from `ip`."""
        return self.demanded() or self.engine._half_open_by_ip.get(ip, 0) >= self.cfg.cookie_threshold_ip

    def cookie_ok(self, msg: Message, remote: Addr) -> bool:
        first = msg.payloads[0] if msg.payloads else None
        if not isinstance(first, NotifyPayload) or int(first.type) != NotifyType.COOKIE:
            return False
        nonce = msg.get(PayloadType.NONCE)
        ni = nonce.data if isinstance(nonce, NoncePayload) else b""
        return self.cookie_valid(first.data, ni, remote[0], msg.spi_i)

    def cookie_valid(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes) -> bool:
        return bool(self.engine.cookies.valid(cookie, ni, ip, spi_i, self.engine.now))

    def new_cookie(self, ni: bytes, remote: Addr, spi_i: bytes) -> bytes:
        eng = self.engine
        eng.counters["cookies-sent"] += 1
        eng.log_limit.log(logging.INFO, "cookie", eng.now, "sending COOKIE to %s[%d] (%d half-open IKE_SAs)",
                          remote[0], remote[1], eng.half_open)
        return bytes(eng.cookies.make(ni, remote[0], spi_i, eng.now))

    def send_cookie(self, msg: Message, local: Addr, remote: Addr) -> None:
        """Answer a decoded IKE_SA_INIT request with a COOKIE."""
        nonce = msg.get(PayloadType.NONCE)
        ni = nonce.data if isinstance(nonce, NoncePayload) else b""
        cookie = self.new_cookie(ni, remote, msg.spi_i)
        self.engine._send_plain(cookie_reply(msg.spi_i, msg.message_id.to_bytes(4, "big"), cookie), local, remote)

    # ------------------------------------------------------------------ one datagram
    def check(self, data: bytes, local: Addr, remote: Addr, now: float) -> bool:
        """Decisions on the raw datagram before it is decoded, so that a flood costs little per datagram
        (docs/operations.md, "Floods"): the fixed header (RFC 7296 3.1), and for IKE_SA_INIT requests
        while COOKIEs are demanded the per-source limit and the COOKIE itself (RFC 7296 2.6) from the
        generic payload headers. True when the datagram was dropped or answered here."""
        n = len(data)
        if n < IKE_HEADER_LEN:
            return self.drop("malformed", now, remote, "%d octets, shorter than the IKE header", n)
        # read by index rather than with `struct`: a datagram after a wake-up finds the octets in the
        # caches, not the struct module's code and format tables
        length = int.from_bytes(data[24:28], "big")
        if length != n:
            return self.drop("malformed", now, remote, "IKE header length %d differs from the datagram's %d",
                             length, n)
        exchange, flags = data[18], data[19]
        if exchange < IKE_SA_INIT:
            return self.drop("header", now, remote, "reserved exchange type %d", exchange)  # RFC 7296 3.1
        spi_i, spi_r = data[:8], data[8:16]
        if exchange != IKE_SA_INIT or flags & RESPONSE or spi_r != _ZERO8 or spi_i == _ZERO8:
            # an IKE_SA of ours passes at once (spi_known's first test, here without a call); zero SPIs
            # both (an ME connectivity check) go to the engine's extensions
            return ((spi_r if flags & INITIATOR else spi_i) not in self.engine.sas
                    and (spi_i != _ZERO8 or spi_r != _ZERO8)
                    and self._unknown_spi(data, flags, exchange, local, remote, now))
        # an IKE_SA_INIT request for a new IKE_SA: Message ID 0 (RFC 7296 2.2), from the initiator (3.1)
        version, mid = data[17], int.from_bytes(data[20:24], "big")
        major = version >> 4 == _MAJOR
        if major and (mid != 0 or not flags & INITIATOR):
            return self.drop("header", now, remote, "IKE_SA_INIT request with Message ID %d, flags 0x%02x",
                             mid, flags)
        if not self.needs_cookie(remote[0]):
            return False
        if not major:  # RFC 7296 2.5 asks for INVALID_MAJOR_VERSION; not to every datagram of a flood
            return self.drop("header", now, remote, "IKE major version %d", version >> 4)
        return self._gate(data, data[16], local, remote, now)

    def _unknown_spi(self, data: bytes, flags: int, exchange: int, local: Addr, remote: Addr, now: float) -> bool:
        """True (dropped, a request answered with INVALID_IKE_SPI) when the datagram names an IKE_SA we do
        not know; not decoded: RFC 7296 2.21.4 needs the header only."""
        eng = self.engine
        if spi_known(data, flags, exchange, eng.sas):
            return False
        eng.counters["drop-unknown-spi"] += 1
        if not flags & RESPONSE:
            eng._answer_invalid_spi(header_message(data), local, remote, now)
        return True

    def _gate(self, data: bytes, first: int, local: Addr, remote: Addr, now: float) -> bool:
        """An IKE_SA_INIT request while COOKIEs are demanded (RFC 7296 2.6): the per-source limit, then
        the COOKIE itself; True when the request was dropped or answered with a COOKIE here."""
        ip = remote[0]
        if not self.limiter.allow(ip, now):
            return self.drop("init-rate", now, remote, "more than %g IKE_SA_INIT requests per second",
                             self.cfg.init_rate_ip)
        found = scan_init(data, first)
        if found is None:
            return self.drop("invalid", now, remote, "IKE_SA_INIT request without a usable Nonce payload")
        cookie, ni = found
        spi_i = data[:8]
        if cookie and self.cookie_valid(cookie, ni, ip, spi_i):
            return False
        init_index = self.engine.init_index
        if init_index and (spi_i, remote) in init_index:
            return False  # a retransmission of a request we answered: from the response cache
        reply = cookie_reply(spi_i, data[20:24], self.new_cookie(ni, remote, spi_i))
        eng = self.engine
        eng._out.append((NON_ESP_MARKER + reply if eng.is_natt(local[1]) else reply, local, remote))
        return True

    def drop(self, reason: str, now: float, remote: Addr | None, what: str, *args: object) -> bool:
        """Count a pre-filter drop as drop-REASON; its log line is rate-limited per reason."""
        eng = self.engine
        eng.counters[f"drop-{reason}"] += 1
        kind = f"{reason} " if reason in ("malformed", "invalid") else ""
        if remote is None:  # several of one batch, `what` says how many
            eng.log_limit.warning(f"{reason}-packet", now, f"dropping {kind}packets: {what}", *args)
        else:
            eng.log_limit.warning(f"{reason}-packet", now, f"dropping {kind}packet from %s[%d]: {what}", remote[0],
                                  remote[1], *args)
        return True

    # ------------------------------------------------------------------ a batch of datagrams
    def answer_batch(
        self, rb: Any, n: int, sb: Any, natt: bool, v6: bool, now: float,
    ) -> Sequence[int]:
        """While COOKIEs are demanded from everyone: the new IKE_SA_INIT requests among the `n` datagrams
        of the receive batch `rb` (core_ike/io/mmsg.py RecvBatch, from one socket of family IPv6 when
        `v6`, the non-ESP marker first when `natt`) that carry no valid COOKIE are answered with one,
        written into the send batch `sb` (mmsg.SendBatch, flushed by the caller); those over the
        per-source limit or without a usable Nonce are dropped. Returns the indices of the datagrams
        the engine must still receive (all of them when COOKIEs are not demanded from everyone).

        Per datagram this reads the header and the payload chain up to the Nonce with struct, and for a
        COOKIE computes one keyed hash; no address string, no message object."""
        if not self.demanded():
            return range(n)
        self.engine.now = now
        cookies = self.engine.cookies
        version, mac = cookies.current(now)
        middle = self._middle(version)
        reply = _REPLY_NATT if natt else _REPLY
        first_slot, free = sb.open_slots(reply.size)
        j, last = first_slot, first_slot + free
        buf, addrs, lengths, size, sbuf, saddrs, ssize = rb.buf, rb.addrs, rb.lengths, rb.size, sb.buf, sb.addrs, sb.size
        unpack, marker = HEADER.unpack_from, _MARKER.unpack_from
        ip_at, ip_end, key_of = (8, 24, _KEY6.unpack_from) if v6 else (4, 8, _KEY4.unpack_from)
        allow = self.limiter.allow_key if self.limiter.rate > 0 else None
        spis, valid, o = self._spis(), cookies.valid, 4 if natt else 0
        passed: list[int] = []
        limited = invalid = 0
        for i in range(n):
            off, ln = i * size + o, lengths[i] - o
            # ESP or a keepalive (RFC 3948 2.2), or shorter than the IKE header: the engine's
            if ln < IKE_HEADER_LEN or (natt and marker(buf, off - 4)[0]):
                passed.append(i)
                continue
            spi_i_n, spi_r_n, ptype, ver, exchange, flags, mid, length = unpack(buf, off)
            if (exchange != IKE_SA_INIT or flags & 0x28 != INITIATOR or spi_r_n or not spi_i_n or mid
                    or length != ln or ver >> 4 != _MAJOR or j >= last):
                passed.append(i)  # not a new IKE_SA_INIT request (the engine decides), or no slot left
                continue
            found = scan_at(buf, off, off + ln, ptype)
            if found is None:
                invalid += 1
                continue
            cs, ce, ns, ne = found
            aoff = i * 32
            spi, ni, ipb = buf[off: off + 8], buf[ns:ne], addrs[aoff + ip_at: aoff + ip_end]
            if (cs != ce and valid(buf[cs:ce], ni, ipb, spi, now)) or spi in spis:
                passed.append(i)  # a valid COOKIE, or perhaps a retransmission: the engine's (and its limit's)
                continue
            if allow is not None and not allow(key_of(addrs, aoff + ip_at)[0], now):
                limited += 1
                continue
            h = mac.copy()
            h.update(ni)
            h.update(ipb)
            h.update(spi)
            reply.pack_into(sbuf, j * ssize, spi, middle, h.digest())
            saddrs[j * 32: j * 32 + 28] = addrs[aoff: aoff + 28]
            j += 1
        sb.commit(j - first_slot)
        self._account(j - first_slot, limited, invalid, now)
        return passed

    def _middle(self, version: int) -> bytes:
        """Our COOKIE answer between SPIi and the MAC: the rest of the header, the Notify header and the
        cookie's version octet (RFC 7296 2.6, 3.10)."""
        middle = self._middles.get(version & 0xFF)
        if middle is None:
            whole = cookie_reply(b"", bytes(4), bytes((version & 0xFF,)) + bytes(COOKIE_LEN - 1))
            middle = self._middles[version & 0xFF] = whole[: -(COOKIE_LEN - 1)]
        return middle

    def _spis(self) -> Container[bytes]:
        index = self.engine.init_index
        return index.spis if isinstance(index, InitIndex) else {k[0] for k in index}

    def _account(self, sent: int, limited: int, invalid: int, now: float) -> None:
        """The counters and rate-limited log lines of one batch."""
        eng = self.engine
        if sent:
            eng.counters["cookies-sent"] += sent
            eng.log_limit.log(logging.INFO, "cookie", now, "sending COOKIE to %d initiator(s) of one read batch, "
                              "from raw datagrams (%d half-open IKE_SAs)", sent, eng.half_open)
        if limited:
            self.drop("init-rate", now, None, "%d IKE_SA_INIT request(s) over %g per second from their source",
                      limited, self.cfg.init_rate_ip)
            eng.counters["drop-init-rate"] += limited - 1
        if invalid:
            self.drop("invalid", now, None, "%d IKE_SA_INIT request(s) without a usable Nonce payload", invalid)
            eng.counters["drop-invalid"] += invalid - 1

