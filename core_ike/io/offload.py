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

import struct
from dataclasses import dataclass

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


def segment(frame: bytes | memoryview, hdr: VnetHdr) -> list[bytearray]:
    """The IP packets of one TUN frame (the virtio header already stripped into `hdr`): one packet,
    its checksum completed if partial, or, for a TCP GSO frame, its MSS-sized segments."""
    pkt = bytearray(frame)
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if hdr.flags & F_NEEDS_CSUM:
            complete_checksum(pkt, hdr)
        return [pkt]
    if gso not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"GSO type {hdr.gso_type} not segmented here")
    v6, off, proto = l4_offset(pkt)
    if v6 != (gso == GSO_TCPV6):
        raise OffloadError("GSO type does not match the IP version")
    off = hdr.csum_start or off  # the TCP header's place (after any IPv6 extension headers)
    if proto != _TCP and not v6:
        raise OffloadError("TCP GSO frame without TCP")
    if len(pkt) < off + 20:
        raise OffloadError("truncated TCP header")
    thl = (pkt[off + 12] >> 4) * 4
    h = off + thl
    mss = hdr.gso_size
    if thl < 20 or len(pkt) < h or mss <= 0:
        raise OffloadError("bad TCP header length or segment size")
    payload = memoryview(pkt)[h:]
    total = len(payload)
    if total <= mss:
        complete_checksum(pkt, VnetHdr(F_NEEDS_CSUM, 0, 0, 0, off, 16))
        return [pkt]
    ip_hdr = bytes(pkt[:off])
    tcp_hdr = bytearray(pkt[off:h])
    tcp_hdr[16:18] = b"\0\0"
    seq0 = _I.unpack_from(tcp_hdr, 4)[0]
    flags = tcp_hdr[13]
    ip_id = 0 if v6 else _H.unpack_from(ip_hdr, 4)[0]
    addrs = bytes(pkt[8:40]) if v6 else bytes(pkt[12:20])
    proto_b = b"\0\0\0\x06" if v6 else b"\0\x06"
    out: list[bytearray] = []
    n = (total + mss - 1) // mss
    for i in range(n):
        chunk = payload[i * mss : (i + 1) * mss]
        plen = len(chunk)
        tcp_len = thl + plen
        last = i == n - 1
        f = flags if last else flags & ~(_FIN | _PSH)
        if i:
            f &= ~_CWR  # only the first segment carries CWR (RFC 3168 6.1.2, as Linux TSO does)
        tcp_hdr[4:8] = _I.pack((seq0 + i * mss) & 0xFFFFFFFF)
        tcp_hdr[13] = f
        if v6:
            ip = bytearray(ip_hdr)
            ip[4:6] = _H.pack(len(ip_hdr) - 40 + tcp_len)
            pseudo = addrs + tcp_len.to_bytes(4, "big") + proto_b
        else:
            ip = bytearray(ip_hdr)
            ip[2:4] = _H.pack(off + tcp_len)
            ip[4:6] = _H.pack((ip_id + i) & 0xFFFF)  # consecutive IDs, as Linux TSO (RFC 6864 4.1)
            ip[10:12] = b"\0\0"
            ip[10:12] = ipv4_header_checksum(ip)
            pseudo = addrs + proto_b + tcp_len.to_bytes(2, "big")
        s = int.from_bytes(pseudo, "little") + int.from_bytes(tcp_hdr, "little") + csum_le(chunk)
        seg = ip + tcp_hdr + chunk
        seg[off + 16 : off + 18] = _finish(s)
        out.append(seg)
    return out


def split_gro(data: bytes, gso_size: int) -> list[bytes]:
    """The datagrams of one UDP_GRO read: `gso_size` octets each, the last one possibly shorter."""
    if gso_size <= 0 or len(data) <= gso_size:
        return [data]
    return [data[i : i + gso_size] for i in range(0, len(data), gso_size)]


# -- write side: TCP coalescing ------------------------------------------------------------------


class _Flow:
    __slots__ = ("head", "key", "tkey", "off", "h", "v6", "next_seq", "mss", "parts", "size", "closed", "psh")

    def __init__(self, pkt: bytes, key: bytes, off: int, h: int, v6: bool, seq: int, plen: int) -> None:
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


def _tcp_candidate(pkt: bytes) -> tuple[bytes, int, int, bool, int, int] | None:
    """(flow key, L4 offset, header length, IPv6?, seq, payload length) of a plain data segment
    (ACK, optionally PSH; no IP options, fragments or extension headers) whose checksum verifies."""
    n = len(pkt)
    if n < 40:
        return None
    b0 = pkt[0]
    if b0 == 0x45:
        if pkt[9] != _TCP or pkt[6] & 0x3F or pkt[7] or _H.unpack_from(pkt, 2)[0] != n:
            return None  # not TCP, or a fragment (MF / offset), or a length mismatch
        off, v6 = 20, False
        key_ip = pkt[0:2] + pkt[6:7] + pkt[8:10] + pkt[12:20]
    elif b0 >> 4 == 6:
        if n < 60 or pkt[6] != _TCP or _H.unpack_from(pkt, 4)[0] != n - 40:
            return None
        off, v6 = 40, True
        key_ip = pkt[0:4] + pkt[7:40]
    else:
        return None
    thl = (pkt[off + 12] >> 4) * 4
    h = off + thl
    plen = n - h
    if thl < 20 or plen <= 0 or pkt[off + 13] not in (_ACK, _ACK | _PSH):
        return None
    if (pseudo_sum(pkt, v6, _TCP, n - off) + csum_le(memoryview(pkt)[off:])) % 0xFFFF:
        return None  # bad checksum: written alone, the kernel counts and drops it
    key = key_ip + pkt[off : off + 4] + pkt[off + 8 : off + 12] + pkt[off + 14 : off + 16] + pkt[off + 18 : h]
    return key, off, h, v6, _I.unpack_from(pkt, off + 4)[0], plen


class Coalescer:
    """Merges TCP segments into super-packets for one TUN write each; `frames` returns the writes
    as lists of buffers (virtio header first) for `os.writev`."""

    def __init__(self, max_size: int = MAX_IP_PACKET) -> None:
        self.max_size = max_size
        self._out: list[list[bytes | bytearray | memoryview]] = []
        self._flows: dict[bytes, _Flow] = {}
        self.coalesced = 0  # segments merged into another one's write

    def add(self, pkt: bytes) -> None:
        c = _tcp_candidate(pkt)
        if c is None:  # after what its flow queued: a FIN or SYN must not overtake the flow's data
            t = _tuple_key(pkt)
            for fl in [f for f in self._flows.values() if f.tkey == t]:
                self._flush(fl)
            self._out.append([NO_OFFLOAD, pkt])
            return
        key, off, h, v6, seq, plen = c
        fl = self._flows.get(key)
        if fl is not None:
            if (not fl.closed and seq == fl.next_seq and plen <= fl.mss
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
        self._flows[key] = _Flow(pkt, key, off, h, v6, seq, plen)
        self._flows[key].tkey = _tuple_key(pkt)

    def _flush(self, fl: _Flow) -> None:
        del self._flows[fl.key]
        if len(fl.parts) == 1:
            self._out.append([NO_OFFLOAD, fl.head])
            return
        off, h = fl.off, fl.h
        hdr = bytearray(fl.head[:h])
        tcp_len = fl.size - off
        if fl.v6:
            hdr[4:6] = _H.pack(tcp_len)
            gso = GSO_TCPV6
        else:
            hdr[2:4] = _H.pack(fl.size)
            hdr[10:12] = b"\0\0"
            hdr[10:12] = ipv4_header_checksum(hdr[:20])
            gso = GSO_TCPV4
        hdr[off + 13] = _ACK | (_PSH if fl.psh else 0)
        # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented
        ps = pseudo_sum(hdr, fl.v6, _TCP, tcp_len) % 0xFFFF
        hdr[off + 16 : off + 18] = ps.to_bytes(2, "little")
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso, h, fl.mss, off, 16)
        self._out.append([vnet, hdr, *fl.parts])

    def frames(self) -> list[list[bytes | bytearray | memoryview]]:
        for fl in list(self._flows.values()):
            self._flush(fl)
        out, self._out = self._out, []
        return out
