"""IKE messages: header, payload chains, SK protection and SKF fragmentation (sans-IO).

- `decode_message(data)`: IKE header (RFC 7296 3.1) + plaintext payloads; SK/SKF are kept as received.
- `decrypt_message(msg, protector)`: verify and decrypt SK (RFC 7296 3.14), parse the inner payloads.
- `encode_message(msg, protector, fragment_size)`: one datagram, or RFC 7383 SKF fragments.
- `Reassembler`: RFC 7383 2.6 reassembly with limits and a deadline driven by `now`.
- `split_natt(datagram)`: RFC 3948 2.2/2.3 demultiplexing of a UDP 4500 payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from ..buffer import Buffer
from ..constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from ..errors import DecodeError, LocalError, ProtocolError
from .payloads import NotifyPayload, Payload, SkfPayload, SkPayload
from .summary import describe_message, summarize
from .wire import ENCRYPTED_TYPES, encode_payloads, pull_chain, pull_header, push_chain

# RFC 7296 3.1: SPIi(8) SPIr(8) NextPayload(1) Version(1) Exchange(1) Flags(1) MessageID(4) Length(4)
_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2
_SKF_HEADER = struct.Struct("!BBHHH")  # RFC 7383 2.5: generic header + Fragment Number + Total Fragments
SK_HEADER_LEN = 4
SKF_HEADER_LEN = 8
MAX_MESSAGE_SIZE = 65535 - 8  # largest UDP payload; RFC 7296 2.8 needs far less

_EXCHANGES: dict[int, ExchangeType] = {m.value: m for m in ExchangeType}
_FLAGS: list[HeaderFlag] = [HeaderFlag(i) for i in range(256)]
# bit tests by table (IntFlag's `&` runs Python code); indexing with an int subclass is C-fast
_IS_RESPONSE: tuple[bool, ...] = tuple(bool(i & HeaderFlag.RESPONSE) for i in range(256))
_IS_INITIATOR: tuple[bool, ...] = tuple(bool(i & HeaderFlag.INITIATOR) for i in range(256))

T = TypeVar("T")


class SkProtector(Protocol):
    """One direction of SK protection (implemented by `core_ike.crypto.sk`).

    `prefix` is everything before the IV with final lengths: the IKE header and the SK (or SKF)
    header, plus the fragment number/total for SKF (RFC 7296 3.14, RFC 5282 5.1, RFC 7383 2.5).
    """

    def sealed_length(self, plaintext_len: int) -> int:
        """len(IV | ciphertext incl. padding and Pad Length | ICV) for `plaintext_len` octets."""
        ...

    def seal(self, prefix: bytes, plaintext: bytes) -> bytes:
        """Pad, encrypt and authenticate; returns IV | ciphertext | ICV."""
        ...

    def open(self, prefix: bytes, body: bytes) -> bytes:
        """Verify the ICV (IntegrityError), decrypt and strip the padding."""
        ...


@dataclass(slots=True)
class Message:
    spi_i: bytes
    spi_r: bytes
    exchange: int  # ExchangeType member when known, else the raw value
    flags: HeaderFlag
    message_id: int
    payloads: list[Payload] = field(default_factory=list)  # inner payloads for protected messages
    encrypted: bool = False  # payloads are (to be) carried inside SK
    raw: bytes = b""  # as received, from the IKE header on (fragment 1 for reassembled messages)
    sk: SkPayload | SkfPayload | None = None  # as received, before decryption
    decrypted: bool = False  # `sk` was verified and its inner payloads are in `payloads`
    unprotected: int = 0  # leading entries of `payloads` that were outside SK (RFC 7296 3.14)

    # --- header flags (RFC 7296 3.1) -----------------------------------------------------------
    @property
    def is_response(self) -> bool:
        return _IS_RESPONSE[self.flags & 0xFF if self.flags > 0xFF else self.flags]

    @property
    def is_request(self) -> bool:
        return not _IS_RESPONSE[self.flags & 0xFF if self.flags > 0xFF else self.flags]

    @property
    def is_initiator(self) -> bool:
        """I flag: sent by the original initiator of the IKE SA."""
        return _IS_INITIATOR[self.flags & 0xFF if self.flags > 0xFF else self.flags]

    # --- payload access ------------------------------------------------------------------------
    def get(self, ptype: int) -> Payload | None:
        for p in self.payloads:
            if p.ptype == ptype:
                return p
        return None

    def get_all(self, ptype: int) -> list[Payload]:
        return [p for p in self.payloads if p.ptype == ptype]

    def first(self, cls: type[T]) -> T | None:
        """Typed access: the first payload that is an instance of `cls`."""
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all_of(self, cls: type[T]) -> list[T]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notify(self, ntype: int) -> NotifyPayload | None:
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.type == ntype:
                return p
        return None

    def notifies(self, ntype: int | None = None) -> list[NotifyPayload]:
        """All notifies of `ntype` (all notifies when None)."""
        return [
            p for p in self.payloads
            if isinstance(p, NotifyPayload) and (ntype is None or p.type == ntype)
        ]

    def error_notify(self) -> NotifyPayload | None:
        """The first error notify (type < 16384, RFC 7296 3.10.1), if any."""
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.is_error:
                return p
        return None

    # --- logging -------------------------------------------------------------------------------
    def summary(self) -> str:
        """strongSwan-style payload list, e.g. `[ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]`."""
        return summarize(self.payloads, self.sk, self.decrypted)

    def describe(self) -> str:
        """e.g. `IKE_SA_INIT request 0 [ SA KE No ]` (follows strongSwan's generating/parsed lines)."""
        return describe_message(self.exchange, self.is_response, self.message_id, self.summary())


# --- decoding --------------------------------------------------------------------------------------


def decode_message(data: bytes) -> Message:
    """Parse the IKE header and the plaintext payloads; SK/SKF are kept raw in `msg.sk`."""
    if type(data) is not bytes:
        data = bytes(data)  # memoryview / bytearray from the adapter: `raw` must be immutable
    n = len(data)
    if n < IKE_HEADER_LEN:
        raise DecodeError(f"IKE message of {n} octets shorter than the {IKE_HEADER_LEN}-octet header")
    if n > MAX_MESSAGE_SIZE:
        raise DecodeError(f"IKE message of {n} octets exceeds {MAX_MESSAGE_SIZE}")
    spi_i, spi_r, first, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
    if version >> 4 != IKE_VERSION >> 4:
        # RFC 7296 2.5 / 3.1: answer with the highest version we support; minor version ignored
        raise ProtocolError(
            f"IKE major version {version >> 4} not supported", NotifyType.INVALID_MAJOR_VERSION
        )
    if length != n:
        raise DecodeError(f"IKE header length {length} differs from the datagram length {n}")
    buf = Buffer(data)
    buf.pos = IKE_HEADER_LEN
    payloads, stop = pull_chain(buf, first, ENCRYPTED_TYPES)
    sk = _pull_encrypted(buf, data, stop) if stop else None
    return Message(
        spi_i, spi_r, _EXCHANGES.get(exchange, exchange), _FLAGS[flags], mid, payloads,
        encrypted=sk is not None, raw=data, sk=sk,
    )


def _pull_encrypted(buf: Buffer, data: bytes, ptype: int) -> SkPayload | SkfPayload:
    """The SK (RFC 7296 3.14) or SKF (RFC 7383 2.5) payload at the buffer's position, read from the
    octets with one unpack per header (as pull_chain reads generic headers); a broken generic header
    is pull_header's to describe."""
    start, n = buf.pos, len(data)
    if n - start < SK_HEADER_LEN:
        pull_header(buf)  # raises with the details
    nxt, _crit, length = _GENERIC.unpack_from(data, start)
    if length < SK_HEADER_LEN or start + length > n:
        pull_header(buf)  # raises with the details
    if start + length != n:
        # RFC 7296 3.14 / RFC 7383 2.5: SK and SKF are the last payload; one per message
        raise DecodeError(
            f"{n - start - length} octets after the encrypted payload (type {ptype}); it must be last"
        )
    if ptype == PayloadType.SK:
        return SkPayload(nxt, data[: start + SK_HEADER_LEN], data[start + SK_HEADER_LEN :])
    if length < SKF_HEADER_LEN:
        raise DecodeError(f"SKF payload body of {length - SK_HEADER_LEN} octets lacks fragment number and total")
    _, _, _, number, total = _SKF_HEADER.unpack_from(data, start)
    if number == 0 or number > total:
        # RFC 7383 2.6: invalid fragment numbers are discarded
        raise DecodeError(f"SKF fragment {number} invalid for total {total}")
    if number != 1 and nxt != PayloadType.NONE:
        raise DecodeError(f"SKF fragment {number} has Next Payload {nxt}; only fragment 1 may")  # 2.5
    split = start + SKF_HEADER_LEN
    return SkfPayload(nxt, number, total, data[:split], data[split:])


def _parse_inner(plaintext: bytes, first: int) -> list[Payload]:
    """Inner payloads of a verified SK: syntax errors are now answerable (RFC 7296 3.10.1)."""
    try:
        payloads, stop = pull_chain(Buffer(plaintext), first, ENCRYPTED_TYPES)
    except DecodeError as e:
        raise ProtocolError(f"invalid encrypted payload contents: {e}", NotifyType.INVALID_SYNTAX) from e
    if stop:
        raise ProtocolError(f"nested encrypted payload (type {stop})", NotifyType.INVALID_SYNTAX)
    return payloads


def decrypt_message(msg: Message, protector: SkProtector) -> Message:
    """Verify and decrypt SK; returns a new Message whose payloads include the inner ones.

    IntegrityError (a DecodeError) when the ICV fails: drop silently (RFC 7296 2.21.2).
    A message without SK, or already decrypted, is returned unchanged.
    """
    sk = msg.sk
    if sk is None or msg.decrypted:
        return msg
    if isinstance(sk, SkfPayload):
        raise LocalError("SKF fragments are decrypted by a Reassembler")
    return _with_inner(msg, _parse_inner(protector.open(sk.prefix, sk.body), sk.first_inner))


def _with_inner(msg: Message, inner: list[Payload]) -> Message:
    """`msg` decrypted: its plaintext payloads, then the inner ones (RFC 7296 3.14; RFC 7383 2.6 for
    a reassembled message). The constructor, not dataclasses.replace: this runs for every protected message."""
    return Message(
        msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id, msg.payloads + inner, msg.encrypted,
        msg.raw, msg.sk, True, len(msg.payloads),
    )


# --- encoding --------------------------------------------------------------------------------------


def _header(msg: Message, first: int, length: int) -> bytes:
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:
        raise LocalError(f"IKE SPIs must be 8 octets ({len(msg.spi_i)}, {len(msg.spi_r)})")
    return _HEADER.pack(
        msg.spi_i, msg.spi_r, first, IKE_VERSION, int(msg.exchange), int(msg.flags),
        msg.message_id, length,
    )


def encode_message(
    msg: Message, protector: SkProtector | None = None, fragment_size: int | None = None
) -> list[bytes]:
    """Encode `msg` into datagrams (without the non-ESP marker).

    Plaintext messages give one datagram. With `msg.encrypted` all payloads go inside SK sealed by
    `protector`; if `fragment_size` (maximum IKE message length, header included) is set and the
    message is larger, RFC 7383 SKF fragments are produced instead, each sealed separately.
    """
    first = int(msg.payloads[0].ptype) if msg.payloads else PayloadType.NONE
    if not msg.encrypted:
        buf = Buffer()
        buf.push_bytes(_header(msg, first, 0))
        push_chain(buf, msg.payloads)
        buf.patch_u32(24, buf.tell)
        return [buf.getvalue()]
    if protector is None:
        raise LocalError("encrypted message needs a protector")
    inner = encode_payloads(msg.payloads)
    sealed = protector.sealed_length(len(inner))
    total = IKE_HEADER_LEN + SK_HEADER_LEN + sealed
    if fragment_size is None or total <= fragment_size:
        prefix = _header(msg, PayloadType.SK, total) + _GENERIC.pack(first, 0, SK_HEADER_LEN + sealed)
        return [prefix + _seal(protector, prefix, inner, sealed)]
    return _fragment(msg, protector, inner, first, fragment_size)


def _seal(protector: SkProtector, prefix: bytes, plaintext: bytes, sealed: int) -> bytes:
    body = protector.seal(prefix, plaintext)
    if len(body) != sealed:
        raise LocalError(f"protector sealed {len(body)} octets, announced {sealed}")
    return body


def _max_chunk(protector: SkProtector, room: int, limit: int) -> int:
    """Largest plaintext length n <= limit with sealed_length(n) <= room (binary search)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if protector.sealed_length(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fragment(
    msg: Message, protector: SkProtector, inner: bytes, first: int, fragment_size: int
) -> list[bytes]:
    """RFC 7383 2.5: split the inner payload octets over SKF payloads of one Message ID."""
    room = fragment_size - IKE_HEADER_LEN - SKF_HEADER_LEN
    chunk = _max_chunk(protector, room, len(inner))
    if chunk < 1:
        raise LocalError(f"fragment_size {fragment_size} leaves no room for fragment data")
    total = -(-len(inner) // chunk)
    if total > 0xFFFF:
        raise LocalError(f"{total} fragments exceed the 16-bit Total Fragments field")
    out: list[bytes] = []
    for i in range(total):
        part = inner[i * chunk : (i + 1) * chunk]
        sealed = protector.sealed_length(len(part))
        length = IKE_HEADER_LEN + SKF_HEADER_LEN + sealed
        # RFC 7383 2.5: Next Payload is the first inner type in fragment 1 only, else 0
        nxt = first if i == 0 else PayloadType.NONE
        prefix = _header(msg, PayloadType.SKF, length) + _SKF_HEADER.pack(
            nxt, 0, SKF_HEADER_LEN + sealed, i + 1, total
        )
        out.append(prefix + _seal(protector, prefix, part, sealed))
    return out


# --- RFC 7383 reassembly ---------------------------------------------------------------------------

ReassemblyKey = tuple[bytes, bytes, int, bool]  # (SPIi, SPIr, Message ID, response)

# What holding a fragment costs beyond its plaintext octets (bytes object and dict slot), and an
# incomplete message beyond its fragments (the _Partial, its dict, the key tuple, the budget's slot):
# the accounting below is of memory held, not of payload octets.
FRAGMENT_OVERHEAD = 100
MESSAGE_OVERHEAD = 500


@dataclass(frozen=True, slots=True)
class Drop:
    """Fragments a Reassembler gave up (for the caller's counters and log lines)."""

    key: ReassemblyKey
    reason: str  # memory | limit | expired | replaced | duplicate | closed
    fragments: int  # datagrams dropped: those held plus the one that caused it, if any
    octets: int  # accounted octets released


@dataclass(eq=False, slots=True)  # hashed by identity: a key of ReassemblyBudget._age
class _Partial:
    key: ReassemblyKey
    total: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)  # fragment number -> plaintext
    size: int = 0  # plaintext octets (the max_size limit)
    cost: int = 0  # accounted octets (the memory caps)
    first: Message | None = None  # fragment 1 (header, Next Payload, raw), without its ciphertext


class ReassemblyBudget:
    """One cap on the octets held by incomplete messages of many Reassemblers (one per IKE SA).

    When it is full, the oldest incomplete message of any of them is dropped first; the Reassembler
    that needed the room reports that drop.
    """

    def __init__(self, max_total: int) -> None:
        self.max_total = max_total
        self.used = 0
        self.peak = 0
        self._age: dict[_Partial, Reassembler] = {}  # insertion order = age

    def __len__(self) -> int:
        return len(self._age)

    def _charge(self, part: _Partial, owner: Reassembler, octets: int) -> None:
        self._age.setdefault(part, owner)
        self.used += octets
        self.peak = max(self.peak, self.used)

    def _release(self, part: _Partial) -> None:
        if self._age.pop(part, None) is not None:
            self.used -= part.cost

    def _make_room(self, octets: int, keep: _Partial | None) -> list[Drop]:
        """Drop the oldest incomplete messages except `keep` until `octets` more fit (or none is left)."""
        drops: list[Drop] = []
        while self.used + octets > self.max_total:
            victim = next((p for p in self._age if p is not keep), None)
            if victim is None:
                break
            drops.append(self._age[victim]._remove(victim.key, "memory"))
        return drops


class Reassembler:
    """Collects SKF fragments per (SPIi, SPIr, Message ID, response flag) (RFC 7383 2.6).

    Each fragment is verified and decrypted when it arrives, so forged fragments cannot poison a
    reassembly (RFC 7383 2.6 / 5), nor push out others. Limits bound memory: per message
    (`max_fragments`, `max_size` plaintext octets), per Reassembler (`max_bytes` accounted octets of all
    its incomplete messages) and, through a shared `budget`, across Reassemblers; when a memory cap is
    hit the oldest incomplete message goes first. An incomplete message is dropped once its deadline
    (`timeout` after its first fragment) has passed. Every fragment given up is reported in `drops`
    (drained by the caller with `take_drops`).
    """

    def __init__(self, max_fragments: int = 32, max_size: int = 65536, timeout: float = 30.0,
                 max_bytes: int | None = None, budget: ReassemblyBudget | None = None) -> None:
        self.max_fragments = max_fragments
        self.max_size = max_size
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.budget = budget
        self.used = 0  # accounted octets of the incomplete messages held
        self.peak = 0
        self.drops: list[Drop] = []
        self._partials: dict[ReassemblyKey, _Partial] = {}  # insertion order = age

    def __len__(self) -> int:
        return len(self._partials)

    def keys(self) -> list[ReassemblyKey]:
        return list(self._partials)

    def __iter__(self) -> Iterator[ReassemblyKey]:
        # over a copy: a caller may discard the key it is looking at
        return iter(self.keys())

    def take_drops(self) -> list[Drop]:
        out, self.drops = self.drops, []
        return out

    def next_deadline(self) -> float | None:
        # asked after every datagram of an IKE_SA that ever received a fragment; mostly none is held
        return min((p.deadline for p in self._partials.values()), default=None) if self._partials else None

    def expire(self, now: float) -> list[ReassemblyKey]:
        """Drop reassemblies whose deadline passed; returns their keys (for a log line)."""
        gone = [k for k, p in self._partials.items() if p.deadline <= now] if self._partials else []
        for k in gone:
            self.drops.append(self._remove(k, "expired"))
        return gone

    def discard(self, key: ReassemblyKey, reason: str = "replaced") -> None:
        if key in self._partials:
            self.drops.append(self._remove(key, reason))

    def clear(self) -> None:
        """Give up everything (the IKE SA is gone): releases the shared budget."""
        for k in list(self._partials):
            self.drops.append(self._remove(k, "closed"))

    def _forget(self, key: ReassemblyKey) -> _Partial:
        part = self._partials.pop(key)
        self.used -= part.cost
        if self.budget is not None:
            self.budget._release(part)
        return part

    def _remove(self, key: ReassemblyKey, reason: str, extra: int = 0) -> Drop:
        part = self._forget(key)
        return Drop(key, reason, len(part.parts) + extra, part.cost)

    def _refuse(self, key: ReassemblyKey, reason: str, why: str) -> DecodeError:
        """Drop the fragment at hand with its whole message (RFC 7383 2.6: a message over a limit)."""
        if key in self._partials:
            self.drops.append(self._remove(key, reason, 1))
        else:
            self.drops.append(Drop(key, reason, 1, 0))
        return DecodeError(why)

    def add(self, msg: Message, protector: SkProtector, now: float) -> Message | None:
        """Feed one decoded SKF message; returns the assembled, decrypted Message when complete.

        Raises IntegrityError for a fragment failing its ICV (drop it, keep the others),
        DecodeError when a limit is exceeded (the whole reassembly is dropped).
        """
        done = self.add_plain(msg, protector, now)
        return None if done is None else reassembled(*done)

    def add_plain(self, msg: Message, protector: SkProtector, now: float) -> tuple[Message, bytes] | None:
        """`add`, the complete message given undecoded: fragment 1 (its header and Next Payload, without
        its ciphertext) and the reassembled plaintext of the inner payloads (`reassembled` decodes them)."""
        skf = msg.sk
        if not isinstance(skf, SkfPayload):
            raise LocalError("Reassembler.add needs a message carrying an SKF payload")
        self.expire(now)
        key: ReassemblyKey = (msg.spi_i, msg.spi_r, msg.message_id, msg.is_response)
        if skf.total > self.max_fragments:
            # not authenticated yet: this fragment goes, a reassembly under way stays
            self.drops.append(Drop(key, "limit", 1, 0))
            raise DecodeError(f"{skf.total} fragments announced, limit {self.max_fragments}")
        part = self._partials.get(key)
        if part is not None and (
            skf.total < part.total or (skf.total == part.total and skf.number in part.parts)
        ):
            # RFC 7383 2.6.1: smaller Total Fragments or duplicate: discard the fragment
            self.drops.append(Drop(key, "duplicate", 1, 0))
            return None
        plaintext = protector.open(skf.prefix, skf.body)  # IntegrityError propagates
        if part is not None and skf.total > part.total:
            # RFC 7383 2.6.1: a larger total means the sender re-fragmented; start over
            self.drops.append(self._remove(key, "replaced"))
            part = None
        if part is not None and part.size + len(plaintext) > self.max_size:
            raise self._refuse(key, "limit", f"reassembled message exceeds {self.max_size} octets")
        # fragment 1 is kept for its header, without the ciphertext (decode_message copied it);
        # the constructors, not dataclasses.replace: this runs for every fragmented message
        first = Message(
            msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id, msg.payloads, msg.encrypted, msg.raw,
            SkfPayload(skf.first_inner, skf.number, skf.total, skf.prefix, b""), msg.decrypted, msg.unprotected,
        ) if skf.number == 1 else None
        cost = len(plaintext) + FRAGMENT_OVERHEAD + (len(msg.raw) if first is not None else 0)
        cost += MESSAGE_OVERHEAD if part is None else 0
        self._make_room(cost, part, key)
        if part is None:
            part = _Partial(key, skf.total, now + self.timeout)
            self._partials[key] = part
        part.parts[skf.number] = plaintext
        part.size += len(plaintext)
        part.cost += cost
        self.used += cost
        self.peak = max(self.peak, self.used)
        if self.budget is not None:
            self.budget._charge(part, self, cost)
        if first is not None:
            part.first = first
        if len(part.parts) < part.total:
            return None
        return _assemble(self._forget(key))

    def _make_room(self, cost: int, part: _Partial | None, key: ReassemblyKey) -> None:
        """The memory caps: drop the oldest other incomplete messages (here, then anywhere under the
        budget) until `cost` more octets fit; if they never do, the message at hand goes."""
        if self.max_bytes is not None and self.used + cost > self.max_bytes:  # the others listed only then
            for k in [k for k in self._partials if self._partials[k] is not part]:
                if self.used + cost <= self.max_bytes:
                    break
                self.drops.append(self._remove(k, "memory"))
            if self.used + cost > self.max_bytes:
                raise self._refuse(key, "memory", f"incomplete messages exceed {self.max_bytes} octets")
        budget = self.budget
        if budget is not None and budget.used + cost > budget.max_total:  # as its _make_room's loop asks
            self.drops += budget._make_room(cost, part)
            if budget.used + cost > budget.max_total:
                raise self._refuse(key, "memory", f"incomplete messages exceed the total of {budget.max_total} octets")


def _assemble(part: _Partial) -> tuple[Message, bytes]:
    first = part.first
    assert first is not None  # all numbers 1..total present
    return first, b"".join(map(part.parts.__getitem__, range(1, part.total + 1)))


def reassembled(first: Message, plaintext: bytes) -> Message:
    """The message `Reassembler.add_plain` completed, decrypted: fragment 1's header and plaintext
    payloads, then the inner payloads decoded from `plaintext` (RFC 7383 2.6)."""
    assert isinstance(first.sk, SkfPayload)
    return _with_inner(first, _parse_inner(plaintext, first.sk.first_inner))


# --- UDP 4500 demultiplexing -----------------------------------------------------------------------

NattKind = Literal["keepalive", "ike", "esp"]


def split_natt(datagram: bytes) -> tuple[NattKind, bytes]:
    """RFC 3948 2.2/2.3: 0xFF alone = NAT-keepalive; 4 zero octets = IKE (marker stripped); else ESP."""
    if datagram == NAT_KEEPALIVE:
        return "keepalive", b""
    if len(datagram) < 4:
        raise DecodeError(f"UDP payload of {len(datagram)} octets is neither keepalive, IKE nor ESP")
    if datagram[:4] == NON_ESP_MARKER:
        return "ike", datagram[4:]
    return "esp", datagram
