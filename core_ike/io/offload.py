"""Segmentation offload for the userspace ESP data plane: pure functions, no sockets.

With ``IFF_VNET_HDR`` every TUN frame starts with a ``struct virtio_net_hdr`` (Linux
``include/uapi/linux/virtio_net.h``, legacy layout: host byte order, 10 octets)::

    flags (1) | gso_type (1) | hdr_len (2) | gso_size (2) | csum_start (2) | csum_offset (2)

- Read side (TSO, ``TUNSETOFFLOAD``): the kernel hands us TCP "super-packets" of up to 64 KiB with
  one set of headers (``gso_type`` TCPV4/TCPV6, ``gso_size`` = MSS) and a partial checksum
  (``NEEDS_CSUM``: the TCP checksum field holds the pseudo-header sum, RFC 9293 3.1).
  `segment` cuts one into MSS-sized TCP segments with their own IP and TCP headers and full
  checksums, as a NIC's TSO engine would; each segment then becomes one ESP packet (RFC 4303 2:
  one inner IP packet per ESP packet), so the peer sees ordinary packets.
- Write side: `Coalescer` merges consecutive in-order segments of one TCP flow (decrypted from one
  receive batch) into one super-packet written with ``gso_type`` TCPV4/TCPV6, as the kernel's own
  GRO does (``net/ipv4/tcp_offload.c``): one TUN write and one pass through the TCP stack instead
  of one per segment. A segment joins only when its TCP checksum verifies, so a corrupt inner
  packet is still dropped by the kernel as it would be without coalescing.

Checksums: the Internet checksum (RFC 1071) is a ones' complement sum of 16-bit words, i.e. the
data read as one integer modulo 0xFFFF (2^16 is 1 modulo 0xFFFF), computed here with
`int.from_bytes` in little-endian order (RFC 1071 2(B): the sum is byte-order independent; an odd
final octet is the low half of a word, as RFC 1071 pads it).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..esp.views import VIEWS

try:  # sums of many packets in one call; without it, one int.from_bytes per packet
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is a dependency; the fallback gives the same sums
    HAVE_NUMPY = False
else:
    HAVE_NUMPY = True
    # the word types as dtype objects, made once: numpy parses a dtype string at every call that names one
    _U1, _LE_U2, _LE_U4 = _np.dtype("u1"), _np.dtype("<u2"), _np.dtype("<u4")
    _BE_U2, _BE_U4 = _np.dtype(">u2"), _np.dtype(">u4")

VNET_HDR = struct.Struct("=BBHHHH")  # struct virtio_net_hdr, legacy (host byte order)
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80
NO_OFFLOAD = VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0)  # a plain packet: the kernel verifies checksums

_TCP = 6
_UDP = 17
_FIN, _PSH, _ACK, _CWR = 0x01, 0x08, 0x10, 0x80
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_HH = struct.Struct(">HH")
MAX_IP_PACKET = 65535


class OffloadError(ValueError):
    """A TUN frame whose virtio header or headers do not describe a packet we can segment."""


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @classmethod
    def parse(cls, frame: bytes | memoryview) -> VnetHdr:
        if len(frame) < VNET_HDR_LEN:
            raise OffloadError(f"TUN frame of {len(frame)} octets has no virtio header")
        return cls(*VNET_HDR.unpack_from(frame))

    def pack(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                             self.csum_offset)


def csum_le(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of `data` (little-endian words) modulo 0xFFFF (RFC 1071)."""
    return int.from_bytes(data, "little") % 0xFFFF


def chunk_sums(view: memoryview, size: int, count: int, vector: bool = HAVE_NUMPY) -> list[int]:
    """Sums (congruent modulo 0xFFFF to `csum_le`) of `count` consecutive `size`-octet chunks."""
    if vector and size % 2 == 0 and count > 1:
        return [int(x) for x in row_sums(_np.frombuffer(view, _np.uint8, count * size).reshape(count, size)).tolist()]
    return [csum_le(view[i * size : (i + 1) * size]) for i in range(count)]


def row_sums(rows: Any) -> Any:
    """Sums (congruent modulo 0xFFFF to `csum_le`) of the rows of an n x m octet array, m even: as
    32-bit words when m is a multiple of 4 (2^16 is 1 modulo 0xFFFF, so a 32-bit word's value is
    congruent to the sum of its two 16-bit halves), which halves the additions."""
    return _np.add.reduce(rows.view(_LE_U4 if rows.shape[1] % 4 == 0 else _LE_U2), axis=1, dtype=_np.uint64)


def packet_sums(pkts: Sequence[bytes], vector: bool = HAVE_NUMPY) -> list[int]:
    """Sums (congruent modulo 0xFFFF to `csum_le`) of each packet."""
    if not (vector and len(pkts) > 2):
        return [csum_le(p) for p in pkts]
    parts: list[bytes] = []
    starts: list[int] = []
    at = 0
    for p in pkts:
        starts.append(at)
        parts.append(p)
        at += (len(p) + 1) // 2
        if len(p) & 1:
            parts.append(b"\0")  # an odd last octet is the low half of its word (RFC 1071)
    words = _np.frombuffer(b"".join(parts), dtype="<u2").astype(_np.uint64)
    sums = _np.add.reduceat(words, starts)
    return [int(x) for x in sums.tolist()]


def _finish(total: int) -> bytes:
    """The checksum field (2 octets, wire order) for a ones' complement sum `total` (mod 0xFFFF)."""
    s = total % 0xFFFF or 0xFFFF  # a non-zero sum that is 0 modulo 0xFFFF is 0xFFFF ("-0")
    return (0xFFFF - s).to_bytes(2, "little")


def ipv4_header_checksum(hdr: bytes | bytearray) -> bytes:
    """RFC 791 3.1 header checksum over `hdr` whose checksum field (octets 10-11) is zero."""
    return _finish(csum_le(hdr))


def pseudo_sum(pkt: bytes | bytearray | memoryview, v6: bool, proto: int, l4_len: int) -> int:
    """Sum of the pseudo-header (RFC 9293 3.1 for IPv4, RFC 8200 8.1 for IPv6)."""
    if v6:
        addrs = bytes(pkt[8:40])
        tail = l4_len.to_bytes(4, "big") + b"\0\0\0" + bytes((proto,))
    else:
        addrs = bytes(pkt[12:20])
        tail = bytes((0, proto)) + l4_len.to_bytes(2, "big")
    return int.from_bytes(addrs + tail, "little")


def l4_offset(pkt: bytes | bytearray | memoryview) -> tuple[bool, int, int]:
    """(IPv6?, offset of the transport header, protocol) for packets without IPv6 extension
    headers; raises OffloadError for anything else."""
    if not pkt:
        raise OffloadError("empty packet")
    ver = pkt[0] >> 4
    if ver == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl:
            raise OffloadError("bad IPv4 header length")
        return False, ihl, pkt[9]
    if ver == 6 and len(pkt) >= 40:
        return True, 40, pkt[6]
    raise OffloadError(f"not an IP packet (version {ver})")


def complete_checksum(pkt: bytearray, hdr: VnetHdr) -> None:
    """Finish a partial checksum (``NEEDS_CSUM``): the sum from csum_start to the end, seeded with
    what the field holds (the pseudo-header sum), stored at csum_start + csum_offset."""
    start, at = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if at + 2 > len(pkt) or start >= len(pkt):
        raise OffloadError("checksum offsets outside the packet")
    c = _finish(csum_le(memoryview(pkt)[start:]))
    if c == b"\0\0" and len(pkt) > at and hdr.csum_offset == 6:
        c = b"\xff\xff"  # UDP: a computed zero is sent as all ones (RFC 768)
    pkt[at : at + 2] = c


def _bswap16(x: int) -> int:
    return ((x & 0xFF) << 8) | (x >> 8)


def segment(frame: bytes | memoryview, hdr: VnetHdr) -> list[bytes]:
    """The IP packets of one TUN frame (the virtio header already stripped into `hdr`): one packet,
    its checksum completed if partial, or, for a TCP GSO frame, its MSS-sized segments.

    The segments' checksums are sums of parts (RFC 1624 style): the headers' constant words once,
    then per segment the words that change (lengths, IP ID, sequence number, flags) and the payload."""
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if hdr.flags & F_NEEDS_CSUM:
            pkt = bytearray(frame)
            complete_checksum(pkt, hdr)
            return [bytes(pkt)]
        return [bytes(frame)]
    v6, off, thl = _gso_tcp(frame, hdr, gso)
    h = off + thl
    mss = hdr.gso_size
    total = len(frame) - h
    if total <= mss:
        pkt = bytearray(frame)
        complete_checksum(pkt, VnetHdr(F_NEEDS_CSUM, 0, 0, 0, off, 16))
        return [bytes(pkt)]
    view = memoryview(frame)
    ip_hdr = bytes(view[:off])
    tcp = bytes(view[off:h])
    ports, mid, rest = tcp[0:4], bytearray(tcp[8:16]), tcp[18:thl]
    seq0 = _I.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    # constant words: pseudo-header addresses and protocol (RFC 9293 3.1, RFC 8200 8.1), ports, ack,
    # data offset, window, urgent pointer, options; flags (the high octet of their word) per segment
    addrs = ip_hdr[8:40] if v6 else ip_hdr[12:20]
    mid[5] = 0
    const = int.from_bytes(addrs, "little") + (_TCP << 8) + int.from_bytes(ports + bytes(mid) + rest, "little")
    if v6:
        ip_a, ip_b = ip_hdr[:4], ip_hdr[6:]
        ext = off - 40  # extension headers count in the IPv6 payload length
    else:
        ip_a, ip_b, ip_c = ip_hdr[:2], ip_hdr[6:10], ip_hdr[12:]
        ip_id = _H.unpack_from(ip_hdr, 4)[0]
        ip_const = int.from_bytes(ip_a + ip_b + ip_c, "little")
    out: list[bytes] = []
    n = (total + mss - 1) // mss
    mid_flags = flags & ~(_FIN | _PSH)
    join = b"".join
    sums = chunk_sums(view[h:], mss, total // mss)
    if len(sums) < n:
        sums.append(csum_le(view[h + (n - 1) * mss :]))
    for i in range(n):
        chunk = view[h + i * mss : h + (i + 1) * mss]
        tcp_len = thl + len(chunk)
        f = flags if i == n - 1 else mid_flags
        if i:
            f &= ~_CWR  # only the first segment carries CWR (RFC 3168 6.1.2, as Linux TSO does)
        mid[5] = f
        seq_b = _I.pack((seq0 + i * mss) & 0xFFFFFFFF)
        s = const + _bswap16(tcp_len) + (f << 8) + int.from_bytes(seq_b, "little") + sums[i]
        if v6:
            ip = join((ip_a, _H.pack(ext + tcp_len), ip_b))
        else:
            var = _HH.pack(off + tcp_len, (ip_id + i) & 0xFFFF)  # consecutive IDs, as Linux TSO (RFC 6864 4.1)
            ip = join((ip_a, var, ip_b, _finish(ip_const + int.from_bytes(var, "little")), ip_c))
        out.append(join((ip, ports, seq_b, mid, _finish(s), rest, chunk)))
    return out


TRAILER_ROOM = 8  # spare octets behind each packet `segment_into` lays out (ESP's trailer: at most 5)


def segment_into(frame: bytes | memoryview, hdr: VnetHdr, plain: bytearray) -> tuple[int, list[int]] | None:
    """`segment` for a TCP GSO frame of several segments, laid out in `plain` instead of returned as
    bytes: segment i at i * stride, `TRAILER_ROOM` spare octets behind each; returns (stride, lengths),
    or None for a frame that is one packet, or without numpy (then `segment` handles it). `plain`
    grows when too small.

    The frame's headers are copied to every row and the payload cut into the rows with numpy (one
    call each); the fields that differ per segment (IP total or payload length, IPv4 ID and header
    checksum, TCP sequence number, flags and checksum) are computed for all rows at once as numpy
    int64 columns and written through strided views of `plain` (`_segment_fields`): no Python work
    per segment. Checksums are `segment`'s sums of parts, kept as numbers (big-endian words): a sum
    of little-endian words, as `row_sums` gives the payload's, is 256 times its big-endian sum
    modulo 0xFFFF (RFC 1071 2(B))."""
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE or not HAVE_NUMPY:
        return None
    v6, off, thl = _gso_tcp(frame, hdr, gso)
    h = off + thl
    mss = hdr.gso_size
    total = len(frame) - h
    if total <= mss:
        return None
    np = _np
    n = (total + mss - 1) // mss
    full = total // mss
    last = total - full * mss
    stride = (h + mss + TRAILER_ROOM + 7) & ~7
    VIEWS.grow(plain, n * stride)  # the batch steps keep slices of it
    rows = np.frombuffer(plain, np.uint8, n * stride).reshape(n, stride)
    src = np.frombuffer(frame, np.uint8)
    head = bytes(frame[:h])
    rows[:, :h] = src[:h]
    payload = src[h : h + full * mss].reshape(full, mss)
    rows[:full, h : h + mss] = payload
    if last:
        plain[full * stride + h : full * stride + h + last] = frame[h + full * mss :]
    # payload sums (little-endian words; an odd last chunk ends with the low half of a word, RFC 1071)
    sums = np.empty(n, np.int64)
    if mss % 2 == 0:
        np.add.reduce(payload.view(_LE_U4 if mss % 4 == 0 else _LE_U2), axis=1, dtype=np.int64, out=sums[:full])
    else:
        sums[:full] = [csum_le(frame[h + i * mss : h + (i + 1) * mss]) for i in range(full)]
    if last:
        sums[full] = csum_le(frame[h + full * mss :])
    _segment_fields(plain, stride, head, v6, off, mss, total, sums)
    return stride, [off + thl + mss] * (n - 1) + [h + total - (n - 1) * mss]


def _segment_fields(plain: bytearray, stride: int, head: bytes, v6: bool, off: int, mss: int, total: int,
                    sums: Any) -> None:
    """`segment_into`'s per-segment fields, written into every row of `plain` (each a copy of the frame's
    headers `head`) as numpy columns: IP total (IPv4) or payload (IPv6) length, IPv4 ID and header
    checksum, TCP sequence number, flags and checksum (`off`: the TCP header's offset in `head`). `sums`:
    each segment's payload sum (int64; used as scratch). The first and last rows' exceptions are
    written afterwards with struct (cheaper than numpy's scalar item access)."""
    np = _np
    n = len(sums)
    thl = len(head) - off
    tcp_len = thl + mss
    tail_len = thl + total - (n - 1) * mss
    end = (n - 1) * stride  # the last row
    seq0 = _I.unpack_from(head, off + 4)[0]
    steps, counts = _steps(n, mss)
    seqs = np.add(steps, seq0)  # uint32 (a Python int takes the array's type): wraps modulo 2^32 as sequence numbers do
    flags = head[off + 13]
    mid_f = flags & ~(_FIN | _PSH | _CWR)
    first_f = flags & ~(_FIN | _PSH)  # only the first segment carries CWR (RFC 3168 6.1.2, as Linux TSO does)
    last_f = flags & ~_CWR  # FIN and PSH stay on the last one
    VIEWS.column(plain, off + 13, stride, n, _U1)[:] = mid_f
    plain[off + 13] = first_f
    plain[end + off + 13] = last_f
    VIEWS.column(plain, off + 4, stride, n, _BE_U4)[:] = seqs
    # TCP checksum (RFC 9293 3.1, RFC 8200 8.1): pseudo-header addresses and protocol, the header's
    # constant words (ports, ack, data offset, window, urgent pointer, options), then per segment its
    # length, sequence number (a 32-bit word's value is congruent to the sum of its halves), flags
    # and payload (a sum of little-endian words is 256 times the big-endian one modulo 0xFFFF,
    # RFC 1071 2(B)); the field is the complement, 0 for a sum congruent to 0
    tcp = bytearray(head[off : off + thl])
    tcp[4:8] = bytes(4)
    tcp[13] = 0
    tcp[16:18] = bytes(2)
    k = int.from_bytes(head[8:40] if v6 else head[12:20], "big") + _TCP + int.from_bytes(tcp, "big") + tcp_len + mid_f
    k %= 0xFFFF  # congruent, and small enough for int64 arithmetic
    first_sum, last_sum = int(sums[0]), int(sums[n - 1])
    sums *= 256  # in place: the complement of sum * 256 + seq + k, modulo 0xFFFF (numpy's % is floored)
    sums += seqs
    np.subtract(-k, sums, out=sums)
    sums %= 0xFFFF
    VIEWS.column(plain, off + 16, stride, n, _BE_U2)[:] = sums
    _H.pack_into(plain, off + 16, (-(first_sum * 256 + seq0 + k) - first_f + mid_f) % 0xFFFF)
    seq_last = (seq0 + (n - 1) * mss) & 0xFFFFFFFF
    _H.pack_into(plain, end + off + 16, (-(last_sum * 256 + seq_last + k) - last_f + mid_f - tail_len + tcp_len) % 0xFFFF)
    if v6:
        ext = off - 40  # extension headers count in the IPv6 payload length
        VIEWS.column(plain, 4, stride, n, _BE_U2)[:] = ext + tcp_len
        _H.pack_into(plain, end + 4, ext + tail_len)
        return
    _ipv4_fields(plain, stride, head, off, n, counts, off + tcp_len, off + tail_len)


def _ipv4_fields(plain: bytearray, stride: int, head: bytes, off: int, n: int, counts: Any, length: int,
                 tail_length: int) -> None:
    """`_segment_fields`' IPv4 total length (`length`, the last row `tail_length`), ID and header checksum."""
    np = _np
    end = (n - 1) * stride
    # IPv4 total length and ID (adjacent) as one 32-bit column; consecutive IDs, as Linux TSO (RFC 6864 4.1)
    id0 = _H.unpack_from(head, 4)[0]
    ids = np.add(counts, id0)
    ids &= 0xFFFF
    id_last = (id0 + n - 1) & 0xFFFF
    VIEWS.column(plain, 2, stride, n, _BE_U4)[:] = ids + (length << 16)
    _H.pack_into(plain, end + 2, tail_length)
    ip = bytearray(head[:off])
    ip[2:6] = bytes(4)
    ip[10:12] = bytes(2)
    c = (int.from_bytes(ip, "big") + length) % 0xFFFF  # RFC 791 3.1: all but length and ID
    np.subtract(0x1FFFE - c, ids, out=ids)  # the complement; uint32, kept above 0 (ID <= 0xFFFF, c < 0xFFFF)
    ids %= 0xFFFF
    VIEWS.column(plain, 10, stride, n, _BE_U2)[:] = ids
    _H.pack_into(plain, end + 10, (-(id_last + c) - tail_length + length) % 0xFFFF)


@functools.lru_cache(maxsize=64)
def _steps(n: int, mss: int) -> tuple[Any, Any]:
    """(0, mss, 2 mss, ...) and (0, 1, 2, ...), `n` each, as read-only uint32 arrays."""
    steps = _np.arange(n, dtype=_np.uint64) * mss
    counts = _np.arange(n, dtype=_np.uint32)
    steps = (steps & 0xFFFFFFFF).astype(_np.uint32)
    steps.flags.writeable = False
    counts.flags.writeable = False
    return steps, counts


def _gso_tcp(frame: bytes | memoryview, hdr: VnetHdr, gso: int) -> tuple[bool, int, int]:
    """(IPv6?, TCP header offset, TCP header length) of a TCP GSO frame; OffloadError for anything else."""
    if gso not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"GSO type {hdr.gso_type} not segmented here")
    v6, off, proto = l4_offset(frame)
    if v6 != (gso == GSO_TCPV6):
        raise OffloadError("GSO type does not match the IP version")
    off = hdr.csum_start or off  # the TCP header's place (after any IPv6 extension headers)
    if proto != _TCP and not v6:
        raise OffloadError("TCP GSO frame without TCP")
    if len(frame) < off + 20:
        raise OffloadError("truncated TCP header")
    thl = (frame[off + 12] >> 4) * 4
    if thl < 20 or len(frame) < off + thl or hdr.gso_size <= 0:
        raise OffloadError("bad TCP header length or segment size")
    return v6, off, thl


def split_gro(data: bytes, gso_size: int) -> list[bytes]:
    """The datagrams of one UDP_GRO read: `gso_size` octets each, the last one possibly shorter."""
    if gso_size <= 0 or len(data) <= gso_size:
        return [data]
    return [data[i : i + gso_size] for i in range(0, len(data), gso_size)]


# -- write side: TCP coalescing ------------------------------------------------------------------


class _Flow:
    __slots__ = ("closed", "h", "head", "key", "mss", "next_seq", "off", "parts", "psh", "size", "tkey", "v6")

    def __init__(self, pkt: bytes, key: object, off: int, h: int, v6: bool, seq: int, plen: int) -> None:
        self.head = pkt
        self.key = key
        self.tkey = b""
        self.off = off
        self.h = h
        self.v6 = v6
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.mss = plen
        self.parts: list[memoryview] = [memoryview(pkt)[h:]]
        self.size = len(pkt)
        self.closed = bool(pkt[off + 13] & _PSH)
        self.psh = self.closed


def _tuple_key(pkt: bytes) -> bytes:
    """Addresses and ports (the first 4 octets of the transport header) of an IP packet."""
    if len(pkt) < 20:
        return b""
    if pkt[0] >> 4 == 6:
        return bytes(pkt[8:44])
    off = (pkt[0] & 0x0F) * 4
    return bytes(pkt[12:20] + pkt[off : off + 4])


_V4TCP = struct.Struct(">BBH2xHBB2x8s4sIIBB2s2x2s")  # IPv4 (no options) + TCP fixed header


def _tcp_candidate(pkt: bytes, total: int) -> tuple[bytes, object, int, int, bool, int, int] | None:
    """(addresses and ports, flow key, L4 offset, header length, IPv6?, seq, payload length) of a plain data segment
    (ACK, optionally PSH; no IP options, fragments or extension headers) whose checksum verifies
    (`total`: the sum of the packet's words, `packet_sums`).
    The key holds every header field that must be equal in segments merged into one (as GRO,
    net/ipv4/tcp_offload.c): addresses, ports, ack, window, urgent pointer, options, TOS, TTL, DF."""
    n = len(pkt)
    if n < 40:
        return None
    if pkt[0] == 0x45:
        _, tos, length, frag, ttl, proto, addrs, ports, seq, ack, doff, flags, win, urg = _V4TCP.unpack_from(pkt)
        if proto != _TCP or frag & 0x3FFF or length != n:
            return None  # not TCP, a fragment (MF or offset), or a length mismatch
        off, v6 = 20, False
        h = 20 + (doff >> 4) * 4
        key: object = (ack, win, urg, tos, ttl, frag, pkt[40:h] if h > 40 else b"")
        tkey = addrs + ports
    elif pkt[0] >> 4 == 6:
        if n < 60 or pkt[6] != _TCP or _H.unpack_from(pkt, 4)[0] != n - 40:
            return None
        off, v6 = 40, True
        doff, flags = pkt[52], pkt[53]
        h = 40 + (doff >> 4) * 4
        key = pkt[0:4] + pkt[7:8] + pkt[48:52] + pkt[54:56] + pkt[58:h]
        tkey = pkt[8:44]
        seq = _I.unpack_from(pkt, 44)[0]
    else:
        return None
    plen = n - h
    if h < off + 20 or plen <= 0 or flags not in (_ACK, _ACK | _PSH):
        return None
    if (total + _tcp_small(pkt, off, v6)) % 0xFFFF:
        return None  # a bad checksum: written alone, the kernel counts and drops it
    return tkey, key, off, h, v6, seq, plen


def gso_header(head: bytes | bytearray | memoryview, off: int, h: int, v6: bool, size: int, mss: int,
               psh: bool) -> tuple[bytes, bytearray]:
    """The virtio header and the IP and TCP headers of a super-packet of `size` octets made of TCP
    segments with the headers `head[:h]` (`off`: the TCP header's offset), `mss` octets of payload each."""
    hdr = bytearray(head[:h])
    tcp_len = size - off
    if v6:
        hdr[4:6] = _H.pack(tcp_len)
        gso = GSO_TCPV6
    else:
        hdr[2:4] = _H.pack(size)
        hdr[10:12] = b"\0\0"
        hdr[10:12] = ipv4_header_checksum(hdr[:20])
        gso = GSO_TCPV4
    hdr[off + 13] = _ACK | (_PSH if psh else 0)
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented
    ps = pseudo_sum(hdr, v6, _TCP, tcp_len) % 0xFFFF
    hdr[off + 16 : off + 18] = ps.to_bytes(2, "little")
    return VNET_HDR.pack(F_NEEDS_CSUM, gso, h, mss, off, 16), hdr


def merge_run(plain: bytearray, stride: int, lengths: list[int],
              max_size: int = MAX_IP_PACKET) -> list[list[bytes | bytearray | memoryview]] | None:
    """`Coalescer` for decrypted packets laid out in `plain` (packet i at i * `stride`) that are the
    consecutive data segments of one TCP connection, as one UDP_GRO read of ESP usually holds: the
    checks of `Coalescer.add` (same headers but for length, IPv4 ID, sequence number, flags and
    checksums; sequence numbers in order; ACK, PSH only on the last; every checksum right) made on
    all rows at once. Returns the TUN writes (super-packets of at most `max_size` octets), or None
    when any packet does not fit (then `Coalescer` looks at them one by one)."""
    n = len(lengths)
    length, tail = lengths[0], lengths[-1] if lengths else 0
    if n < 2 or not HAVE_NUMPY or tail > length or length & 1 or lengths.count(length) < n - 1:
        return None
    rows = _np.frombuffer(plain, _np.uint8, n * stride).reshape(n, stride)
    # whole-packet sums, checked as `_tcp_candidate` does (the last packet's with the others' when it
    # is as long as they are, as a super-packet cut into full segments leaves it)
    whole = n if tail == length else n - 1
    sums = row_sums(rows[:whole, :length])
    first = bytes(plain[:length])
    c = _tcp_candidate(first, int(sums[0]))
    if c is None:
        return None
    _tkey, _key, off, h, v6, seq0, plen = c
    if tail <= h or (plain[0] != 0x45 and not v6):
        return None
    fields = _run_var(h, v6, stride, n).unpack_from(plain)  # every row's varying fields in one unpack
    ip_len, seqs, flags = fields[0::3], fields[1::3], fields[2::3]
    end = seq0 + (n - 1) * plen
    expected = range(seq0, end + 1, plen) if end < 1 << 32 else [(seq0 + i * plen) & 0xFFFFFFFF for i in range(n)]
    nonzero = _np.count_nonzero  # C-level; ndarray.any() goes through a Python wrapper (numpy _methods)
    differ = rows[1:, :h] ^ rows[0, :h]
    differ &= _same_mask(h, v6)
    if (nonzero(differ) or tuple(expected) != seqs
            or ip_len[: n - 1].count(length - 40 if v6 else length) != n - 1 or ip_len[-1] != (tail - 40 if v6 else tail)
            or flags[: n - 1].count(_ACK) != n - 1 or flags[-1] not in (_ACK, _ACK | _PSH)):
        return None
    # (`_tcp_candidate`'s correction: the pseudo-header's protocol and length, the IPv4 addresses once
    # more, the IPv6 header's first 8 octets out; equal in all full-size segments)
    sums += _tcp_small(first, off, v6) % 0xFFFF  # in place: `row_sums` gives a new array
    sums %= 0xFFFF
    if nonzero(sums) or (whole < n and (
            csum_le(plain[(n - 1) * stride : (n - 1) * stride + tail])
            + _tcp_small(plain[(n - 1) * stride : (n - 1) * stride + 40], off, v6, tail)) % 0xFFFF):
        return None
    view = memoryview(plain)
    parts = VIEWS.rows(plain, h, stride, length - h, n - 1)[: n - 1]  # payloads, slices kept for the next run
    parts.append(view[(n - 1) * stride + h : (n - 1) * stride + tail])
    per = max(1, (max_size - h) // plen)
    out: list[list[bytes | bytearray | memoryview]] = []
    for a in range(0, n, per):
        chunk = parts[a : a + per]
        if len(chunk) == 1:
            i = a
            out.append([NO_OFFLOAD, view[i * stride : i * stride + lengths[i]]])
            continue
        size = sum(lengths[a : a + len(chunk)]) - (len(chunk) - 1) * h  # one header and the payloads
        psh = a + len(chunk) == n and flags[-1] == _ACK | _PSH
        out.append([*gso_header(first, off, h, v6, size, plen, psh), *chunk])
    return out


_ROW_VAR = {False: ">2xH20xI5xB", True: ">4xH38xI5xB"}  # IP length field, TCP seq, TCP flags
# the header octets that differ between the segments of one run: IP length (and the IPv4 ID and
# header checksum), TCP sequence number, flags and checksum; all others must be equal
_ROW_VARYING = {False: (2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 33, 36, 37), True: (4, 5, 44, 45, 46, 47, 53, 56, 57)}


@functools.lru_cache(maxsize=256)
def _run_var(h: int, v6: bool, stride: int, n: int) -> struct.Struct:
    """For `n` packets every `stride` octets with IP and TCP headers of `h` octets (IPv4 without
    options, or IPv6 without extension headers): each row's IP length field, sequence number and flags."""
    var = _ROW_VAR[v6][1:]
    var_size = struct.calcsize(">" + var)
    return struct.Struct(">" + f"{var}{stride - var_size}x" * (n - 1) + var)


@functools.lru_cache(maxsize=64)
def _same_mask(h: int, v6: bool) -> Any:
    """0xFF on the header octets every segment of a run shares (all but `_ROW_VARYING`), else 0."""
    mask = _np.full(h, 0xFF, _np.uint8)
    mask[list(_ROW_VARYING[v6])] = 0
    mask.flags.writeable = False
    return mask


def _tcp_small(pkt: bytes | bytearray, off: int, v6: bool, length: int = 0) -> int:
    """What turns the sum of all words of an IP packet with a TCP segment (`length` octets, default
    len(pkt)) into the TCP checksum's sum (0 modulo 0xFFFF when it verifies): an IPv4 header with a
    right checksum adds 0 (RFC 791 3.1), the IPv6 header's first 8 octets are taken out; the
    addresses count once more for the pseudo-header, with protocol and TCP length (RFC 9293 3.1,
    RFC 8200 8.1)."""
    small = (_TCP << 8) + _bswap16((length or len(pkt)) - off)
    return small - int.from_bytes(pkt[:8], "little") if v6 else small + int.from_bytes(pkt[12:20], "little")


class Coalescer:
    """Merges TCP segments into super-packets for one TUN write each; `frames` returns the writes
    as lists of buffers (virtio header first) for `os.writev`."""

    def __init__(self, max_size: int = MAX_IP_PACKET) -> None:
        self.max_size = max_size
        self._out: list[list[bytes | bytearray | memoryview]] = []
        self._flows: dict[bytes, _Flow] = {}  # by addresses and ports
        self.coalesced = 0  # segments merged into another one's write

    def add_all(self, pkts: Sequence[bytes]) -> None:
        for pkt, total in zip(pkts, packet_sums(pkts), strict=True):
            self.add(pkt, total)

    def add(self, pkt: bytes, total: int | None = None) -> None:
        c = _tcp_candidate(pkt, csum_le(pkt) if total is None else total)
        if c is None:  # after what its connection queued: a FIN or SYN must not overtake the data
            pending = self._flows.get(_tuple_key(pkt))
            if pending is not None:
                self._flush(pending)
            self._out.append([NO_OFFLOAD, pkt])
            return
        t, key, off, h, v6, seq, plen = c
        fl = self._flows.get(t)  # at most one pending run per connection: its segments stay in order
        if fl is not None:
            if (fl.key == key and not fl.closed and seq == fl.next_seq and plen <= fl.mss
                    and fl.size + plen <= self.max_size and h == fl.h):
                fl.parts.append(memoryview(pkt)[h:])
                fl.size += plen
                fl.next_seq = (seq + plen) & 0xFFFFFFFF
                self.coalesced += 1
                if plen < fl.mss or pkt[off + 13] & _PSH:
                    fl.closed = True  # a short or pushed segment ends the run (as GRO does)
                    fl.psh = bool(pkt[off + 13] & _PSH)
                return
            self._flush(fl)
        self._flows[t] = fl = _Flow(pkt, key, off, h, v6, seq, plen)
        fl.tkey = t

    def _flush(self, fl: _Flow) -> None:
        del self._flows[fl.tkey]
        if len(fl.parts) == 1:
            self._out.append([NO_OFFLOAD, fl.head])
            return
        self._out.append([*gso_header(fl.head, fl.off, fl.h, fl.v6, fl.size, fl.mss, fl.psh), *fl.parts])

    def frames(self) -> list[list[bytes | bytearray | memoryview]]:
        for fl in list(self._flows.values()):
            self._flush(fl)
        out, self._out = self._out, []
        return out
