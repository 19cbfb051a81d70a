"""Segmentation offload helpers (core_ike.io.offload): TSO super-packets cut into TCP segments with
correct IPv4/IPv6 and TCP headers and checksums, partial checksums completed, decrypted segments
coalesced back into one GSO write, UDP_GRO reads split. Checksums are checked against a plain
RFC 1071 implementation written here."""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Any

import pytest

from core_ike.errors import LocalError
from core_ike.io.fastpath import DEFAULT_STEPS, GSO_MAX_SEGMENTS, OFFLOAD_STEPS, offload_steps, runs
from core_ike.io.offload import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    HAVE_NUMPY,
    NO_OFFLOAD,
    VNET_HDR,
    Coalescer,
    OffloadError,
    VnetHdr,
    chunk_sums,
    packet_sums,
    segment,
    split_gro,
)

SRC4, DST4 = "10.10.1.1", "10.10.2.1"
SRC6, DST6 = "fd00::1", "fd00::2"


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(pkt: bytes, l4_len: int) -> bytes:
    if pkt[0] >> 4 == 4:
        return pkt[12:20] + bytes((0, pkt[9])) + struct.pack(">H", l4_len)
    return pkt[8:40] + struct.pack(">I", l4_len) + bytes((0, 0, 0, pkt[6]))


def l4(pkt: bytes) -> int:
    return (pkt[0] & 0x0F) * 4 if pkt[0] >> 4 == 4 else 40


def l4_ok(pkt: bytes) -> bool:
    off = l4(pkt)
    return rfc1071(pseudo(pkt, len(pkt) - off) + pkt[off:]) == 0xFFFF


def tcp_packet(v6: bool, payload: bytes, seq: int = 1000, flags: int = 0x18, ip_id: int = 7,
               options: bytes = b"", partial: bool = True, src: str | None = None) -> bytes:
    """An IPv4/IPv6 TCP packet; `partial`: the TCP checksum field holds the pseudo-header sum only
    (as the kernel leaves it with NEEDS_CSUM), else the full checksum."""
    thl = 20 + len(options)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 555, (thl // 4) << 4, flags, 502, 0, 0) + options
    if v6:
        ip = struct.pack(">IHBB", 6 << 28, thl + len(payload), 6, 64)
        ip += ipaddress.ip_address(src or SRC6).packed + ipaddress.ip_address(DST6).packed
    else:
        ip = struct.pack(">BBHHHBBH", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, 64, 6, 0)
        ip += ipaddress.ip_address(src or SRC4).packed + ipaddress.ip_address(DST4).packed
        ip = ip[:10] + struct.pack(">H", ~rfc1071(ip) & 0xFFFF) + ip[12:]
    pkt = ip + tcp + payload
    ps = rfc1071(pseudo(pkt, thl + len(payload)))
    csum = ps if partial else ~rfc1071(pseudo(pkt, thl + len(payload)) + tcp + payload) & 0xFFFF
    off = len(ip)
    return pkt[: off + 16] + struct.pack(">H", csum) + pkt[off + 18 :]


def gso_hdr(v6: bool, mss: int, options: bytes = b"") -> VnetHdr:
    off = 40 if v6 else 20
    return VnetHdr(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, off + 20 + len(options), mss, off, 16)


@pytest.mark.parametrize("v6", [False, True])
def test_segment_tso_super_packet(v6: bool) -> None:
    payload = os.urandom(5000)
    opts = b"\x01\x01\x08\x0a" + os.urandom(8)  # NOP NOP timestamps: copied into every segment
    frame = tcp_packet(v6, payload, seq=0xFFFFF000, flags=0x80 | 0x18 | 0x01, options=opts)
    segs = [bytes(s) for s in segment(frame, gso_hdr(v6, 1300, opts))]
    assert [len(s) - l4(s) - 32 for s in segs] == [1300, 1300, 1300, 1100]
    assert b"".join(s[l4(s) + 32 :] for s in segs) == payload
    for i, s in enumerate(segs):
        off = l4(s)
        assert l4_ok(s), f"TCP checksum of segment {i}"
        seq, flags = struct.unpack_from(">I", s, off + 4)[0], s[off + 13]
        assert seq == (0xFFFFF000 + 1300 * i) & 0xFFFFFFFF  # wraps
        assert s[off + 20 : off + 32] == opts
        last = i == len(segs) - 1
        assert bool(flags & 0x08) == last and bool(flags & 0x01) == last  # PSH, FIN on the last only
        assert bool(flags & 0x80) == (i == 0)  # CWR on the first only
        assert flags & 0x10
        if v6:
            assert struct.unpack_from(">H", s, 4)[0] == len(s) - 40
        else:
            assert struct.unpack_from(">H", s, 2)[0] == len(s)
            assert struct.unpack_from(">H", s, 4)[0] == 7 + i  # consecutive IP IDs
            assert rfc1071(s[:20]) == 0xFFFF


def test_segment_plain_packet_completes_partial_checksums() -> None:
    frame = tcp_packet(False, b"odd-length payload!")
    (out,) = segment(frame, VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16))
    assert l4_ok(bytes(out)) and out[:36] == frame[:36] and out[38:] == frame[38:]
    # UDP: a partial checksum completed; untouched without NEEDS_CSUM
    body = os.urandom(33)
    ip = struct.pack(">BBHHHBBH", 0x45, 0, 28 + len(body), 1, 0, 64, 17, 0) + bytes(8)
    udp = struct.pack(">HHHH", 1, 2, 8 + len(body), rfc1071(pseudo(ip, 8 + len(body))))
    (u,) = segment(ip + udp + body, VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6))
    assert l4_ok(bytes(u)) and u[26:28] != b"\0\0"
    assert segment(ip + udp + body, VnetHdr(0, GSO_NONE, 0, 0, 0, 0)) == [ip + udp + body]


def test_segment_rejects_bad_frames() -> None:
    frame = tcp_packet(False, os.urandom(3000))
    with pytest.raises(OffloadError):
        segment(frame, VnetHdr(F_NEEDS_CSUM, 3, 28, 1000, 20, 6))  # UFO: not ours to cut
    with pytest.raises(OffloadError):
        segment(frame, gso_hdr(True, 1000))  # TCPV6 on an IPv4 packet
    with pytest.raises(OffloadError):
        segment(frame[:30], gso_hdr(False, 1000))
    with pytest.raises(OffloadError):
        segment(frame, VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 4000))
    with pytest.raises(OffloadError):
        VnetHdr.parse(b"\0" * 5)


def merged_packet(frame: list[bytes | bytearray | memoryview]) -> tuple[VnetHdr, bytes]:
    hdr = VnetHdr.parse(bytes(frame[0]))
    return hdr, b"".join(bytes(p) for p in frame[1:])


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_segments_into_one_gso_write(v6: bool) -> None:
    payload = os.urandom(6000)
    segs = [bytes(s) for s in segment(tcp_packet(v6, payload), gso_hdr(v6, 1400))]
    c = Coalescer()
    for s in segs:
        c.add(s)
    (frame,) = c.frames()
    hdr, pkt = merged_packet(frame)
    off = 40 if v6 else 20
    assert (hdr.flags, hdr.gso_type, hdr.gso_size) == (F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, 1400)
    assert (hdr.hdr_len, hdr.csum_start, hdr.csum_offset) == (off + 20, off, 16)
    assert pkt[off + 20 :] == payload
    assert pkt[off + 13] == 0x18  # the last segment's PSH
    if v6:
        assert struct.unpack_from(">H", pkt, 4)[0] == len(pkt) - 40
    else:
        assert struct.unpack_from(">H", pkt, 2)[0] == len(pkt) and rfc1071(pkt[:20]) == 0xFFFF
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum; completing it gives a valid packet
    assert struct.unpack_from(">H", pkt, off + 16)[0] == rfc1071(pseudo(pkt, len(pkt) - off))
    done = bytearray(pkt)
    done[off + 16 : off + 18] = struct.pack(">H", ~rfc1071(bytes(done[off:])) & 0xFFFF)
    assert l4_ok(bytes(done))
    assert c.coalesced == len(segs) - 1


def test_coalesce_keeps_order_and_refuses_what_gro_refuses() -> None:
    segs = [bytes(s) for s in segment(tcp_packet(False, os.urandom(4000)), gso_hdr(False, 1000))]
    other = [bytes(s) for s in segment(tcp_packet(False, os.urandom(2000), src="10.10.1.2"),
                                       gso_hdr(False, 1000))]
    bad = bytearray(segs[2])
    bad[-1] ^= 0xFF  # corrupt payload: the checksum fails, never merged
    c = Coalescer()
    for s in (segs[0], other[0], segs[1], bytes(bad), segs[3], other[1]):
        c.add(s)
    got = [merged_packet(f) for f in c.frames()]
    # segs 0+1 merged; bad alone with NO_OFFLOAD (the kernel verifies and drops it); segs[3] cannot
    # follow it (a gap in the sequence numbers); the other flow merged
    assert [(h.gso_type, len(p)) for h, p in got] == [
        (GSO_TCPV4, 2040), (GSO_NONE, 1040), (GSO_TCPV4, 2040), (GSO_NONE, 1040)]
    assert got[0][1][40:] == segs[0][40:] + segs[1][40:]
    assert got[1][1] == bytes(bad)
    assert got[3][1] == segs[3]
    assert got[2][1][40:] == other[0][40:] + other[1][40:]
    # a packet that is not a data segment (here a FIN) is written after what its flow queued
    fin = tcp_packet(False, b"", seq=5000, flags=0x11, partial=False)
    for s in (segs[0], segs[1], fin):
        c.add(s)
    assert [merged_packet(f)[1][-len(fin):] == fin for f in c.frames()] == [False, True]


def test_coalesce_keeps_a_connections_order_across_header_changes() -> None:
    """Bursts of one connection whose headers differ (window, PSH, short tails) come out in sequence
    order: at most one run per connection is pending."""
    segs: list[bytes] = []
    seq = 1000
    for k, n in enumerate([3000, 5000, 4044, 2000, 6000, 1348, 2700]):
        pkt = bytearray(tcp_packet(False, os.urandom(n), seq=seq, flags=0x18 if k % 2 else 0x10))
        if k in (2, 5):
            pkt[34:36] = b"\x03\xe7"  # another window: another run
        segs += segment(bytes(pkt), gso_hdr(False, 1348))
        seq += n
    c = Coalescer()
    c.add_all(segs)
    frames = [merged_packet(f)[1] for f in c.frames()]
    seqs = [struct.unpack_from(">I", p, 24)[0] for p in frames]
    assert seqs == sorted(seqs) and len(frames) < len(segs)
    assert b"".join(p[40:] for p in frames) == b"".join(s[40:] for s in segs)


def test_coalesce_single_and_pure_acks_pass_unchanged() -> None:
    ack = tcp_packet(False, b"", flags=0x10, partial=False)
    one = bytes(segment(tcp_packet(False, os.urandom(100)), gso_hdr(False, 1000))[0])
    c = Coalescer()
    c.add(ack)
    c.add(one)
    assert [[bytes(x) for x in f] for f in c.frames()] == [[NO_OFFLOAD, ack], [NO_OFFLOAD, one]]


def test_split_gro_and_gso_runs() -> None:
    data = bytes(range(256)) * 10
    assert split_gro(data, 1000) == [data[:1000], data[1000:2000], data[2000:]]
    assert split_gro(data, 0) == [data]
    pk = [b"a" * 100] * 3 + [b"b" * 50] + [b"c" * 100] * 2 + [b"d" * 120]
    assert [[len(p) for p in r] for r in runs(pk)] == [[100, 100, 100, 50], [100, 100], [120]]
    many = [b"x" * 10] * (GSO_MAX_SEGMENTS + 3)
    assert [len(r) for r in runs(many)] == [GSO_MAX_SEGMENTS, 3]
    big = [b"y" * 1500] * 50
    assert all(sum(map(len, r)) <= 65000 for r in runs(big))


def test_vector_sums_equal_plain_sums() -> None:
    """Both paths give the RFC 1071 sum: theirs is over little-endian words, which is the big-endian
    sum byte-swapped (RFC 1071 2(B)), i.e. 256 times it modulo 0xFFFF."""
    data = memoryview(os.urandom(1348 * 7 + 99))
    want = [rfc1071(bytes(data[i * 1348 : (i + 1) * 1348])) % 0xFFFF for i in range(7)]
    for vector in (False, True):
        assert [256 * x % 0xFFFF for x in chunk_sums(data, 1348, 7, vector=vector)] == want
    pkts = [os.urandom(n) for n in (1400, 77, 1, 1400, 1399, 60)]
    want = [rfc1071(p) % 0xFFFF for p in pkts]
    for vector in (False, True):
        assert [256 * x % 0xFFFF for x in packet_sums(pkts, vector=vector)] == want
    assert HAVE_NUMPY  # a dependency (pyproject.toml): the default path is the vector one


def test_offload_steps_setting() -> None:
    assert offload_steps(None) == offload_steps("all") == frozenset(
        {"tso", "gso", "gro", "coalesce", "seal_batch", "open_batch"})  # mmsg only when named
    assert "mmsg" in offload_steps("tso,mmsg") and "mmsg" in OFFLOAD_STEPS
    assert offload_steps("none") == frozenset()
    assert offload_steps(" tso, gro ") == frozenset({"tso", "gro"})
    with pytest.raises(LocalError, match="unknown offload step"):
        offload_steps("tso,turbo")
    assert VNET_HDR.size == 10


def test_esp_offload_setting(tmp_path: Any) -> None:
    """[daemon] esp_offload: a valid value is kept, an unknown step is a clear start-up error."""
    from core_ike.daemon.config import load

    base = '[daemon]\ndataplane = "userspace"\n'
    ok = tmp_path / "ok.toml"
    ok.write_text(base + 'esp_offload = "tso,gso"\n')
    assert load(ok).settings.esp_offload == "tso,gso"
    default = tmp_path / "default.toml"
    default.write_text(base)
    assert offload_steps(load(default).settings.esp_offload) == DEFAULT_STEPS
    bad = tmp_path / "bad.toml"
    bad.write_text(base + 'esp_offload = "tso,turbo"\n')
    with pytest.raises(LocalError, match=r"esp_offload: unknown offload step\(s\) turbo"):
        load(bad)
