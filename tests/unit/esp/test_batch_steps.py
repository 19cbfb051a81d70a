"""The userspace data plane's seal_batch and open_batch steps, without I/O: each stage gives exactly what
the per-packet path gives (segment_into = segment, EspSa.seal_into = seal, EspSa.open_into = open_many,
merge_run = Coalescer), refuses what it does not handle without changing any state (the caller then
takes the per-packet path), and a TSO super-packet cut, sealed, opened and merged again equals the
input (payload and headers). Checksums are checked with the RFC 1071 code of test_offload."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core_ike.constants import EncrId, IntegId
from core_ike.errors import LocalError
from core_ike.esp import EspSa, InboundSad, ReplayWindow, SequenceExhaustedError, key_lengths
from core_ike.esp.errors import EspPaddingError
from core_ike.io.offload import (
    F_NEEDS_CSUM,
    GSO_NONE,
    Coalescer,
    VnetHdr,
    merge_run,
    segment,
    segment_into,
)
from tests.unit.esp.test_offload import gso_hdr, l4_ok, merged_packet, pseudo, rfc1071, tcp_packet

OPTS = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps
AEADS_INTO = [
    (EncrId.AES_GCM_16, 128, False),
    (EncrId.AES_GCM_16, 256, True),  # ESN: the AAD carries the high half (RFC 4106 5)
    (EncrId.AES_CCM_16, 128, False),
    (EncrId.CHACHA20_POLY1305, 256, False),
]


def laid_out(plain: bytearray, stride: int, lengths: list[int]) -> list[bytes]:
    return [bytes(plain[i * stride : i * stride + n]) for i, n in enumerate(lengths)]


def sa_pair(encr: EncrId, bits: int, esn: bool = False) -> tuple[EspSa, EspSa]:
    a, b, _ = sa_trio(encr, bits, esn)
    return a, b


def sa_trio(encr: EncrId, bits: int, esn: bool = False) -> tuple[EspSa, EspSa, EspSa]:
    """Three SAs with one key: a sender and two receivers."""
    el, _ = key_lengths(encr, bits, IntegId.NONE)
    key = os.urandom(el)
    a, b, c = (EspSa(0x4242, encr, bits, key, esn=esn) for _ in range(3))
    return a, b, c


def sealed_run(tx: EspSa, payload: bytes, mss: int, v6: bool = False) -> tuple[bytes, list[int], list[bytes]]:
    """A super-packet cut and sealed as seal_batch does: (ESP packets back to back, their sizes, the segments)."""
    frame = tcp_packet(v6, payload, options=OPTS)
    plain, out = bytearray(), bytearray()
    laid = segment_into(frame, gso_hdr(v6, mss, OPTS), plain)
    assert laid is not None
    _, (sizes,) = tx.seal_into([(plain, laid[0], laid[1], 41 if v6 else 4)], out)
    return bytes(out[: sum(sizes)]), sizes, laid_out(plain, *laid)


@pytest.mark.parametrize("v6,size,mss,ip_id", [(False, 47 * 1348, 1348, 7), (True, 5000, 1300, 7), (False, 4001, 999, 7),
                                               (False, 2 * 1200 + 1, 1200, 7), (False, 10 * 1348, 1348, 0xFFFC),
                                               (True, 6 * 1302 + 3, 1302, 7)])  # payload sums over 16-bit words
def test_segment_into_equals_segment(v6: bool, size: int, mss: int, ip_id: int) -> None:
    payload = os.urandom(size)
    # CWR PSH FIN; the sequence number wraps (and with ip_id 0xFFFC the IPv4 ID, RFC 6864 4.1)
    frame = tcp_packet(v6, payload, seq=0xFFFFF000, flags=0x80 | 0x18 | 0x01, ip_id=ip_id, options=OPTS)
    hdr = gso_hdr(v6, mss, OPTS)
    plain = bytearray(b"\xee" * 100)  # a used buffer: grown and overwritten
    laid = segment_into(frame, hdr, plain)
    assert laid is not None
    stride, lengths = laid
    got = laid_out(plain, stride, lengths)
    assert got == [bytes(s) for s in segment(frame, hdr)]
    assert all(l4_ok(s) for s in got)
    assert stride >= max(lengths) + 5  # room for ESP's trailer behind every segment


def test_segment_into_leaves_single_packets_to_segment() -> None:
    plain = bytearray()
    assert segment_into(tcp_packet(False, os.urandom(900)), gso_hdr(False, 1000), plain) is None
    assert segment_into(tcp_packet(False, b"x" * 10), VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16), plain) is None


@pytest.mark.parametrize("encr,bits,esn", AEADS_INTO)
def test_seal_into_equals_seal(encr: EncrId, bits: int, esn: bool) -> None:
    a, b = sa_pair(encr, bits, esn)
    a.seq_out = b.seq_out = 0xFFFFFFF0 if esn else 5  # ESN: the run crosses into the high half
    data, sizes, segs = sealed_run(a, os.urandom(10 * 1300 + 77), 1300)
    want = [b.seal(s, 4, 0.0) for s in segs]
    assert sizes == [len(w) for w in want] and data == b"".join(want)
    assert (a.seq_out, a.counters.packets_out, a.counters.bytes_out) == (
        b.seq_out, b.counters.packets_out, b.counters.bytes_out)


@pytest.mark.parametrize("encr,bits,esn", AEADS_INTO)
def test_seal_into_runs_equal_frame_by_frame(encr: EncrId, bits: int, esn: bool) -> None:
    """Several super-packets (IPv4 and IPv6, each its own buffer, each with a shorter last segment) sealed
    in one call give exactly the packets one call per super-packet gives, and those `seal` gives: the
    sequence numbers run on across the runs in order, every packet opens (ICV, replay window), and the
    counters are the same."""
    a, b, rx = sa_trio(encr, bits, esn)  # `b` seals packet by packet, `rx` opens
    a.seq_out = b.seq_out = rx.window.top = 0xFFFFFFE0 if esn else 9  # ESN: the runs cross into the high half
    frames = [(False, 9 * 1300 + 77), (True, 5 * 1300 + 1), (False, 3 * 1300 + 1000), (False, 2 * 1300)]
    laid: list[tuple[bytearray, int, list[int], int]] = []
    for v6, size in frames:
        plain = bytearray()
        got = segment_into(tcp_packet(v6, os.urandom(size), options=OPTS), gso_hdr(v6, 1300 - (20 if v6 else 0), OPTS),
                           plain)
        assert got is not None
        laid.append((plain, got[0], got[1], 41 if v6 else 4))
    segs = [laid_out(p, stride, lengths) for p, stride, lengths, _ in laid]
    assert len({lengths[0] for _, _, lengths, _ in laid}) == 1  # one segment length: one layout
    out = bytearray(b"\xee" * 10)
    size, sizes = a.seal_into(laid, out)
    got_pkts, o = [], 0
    for run in sizes:
        got_pkts.append([bytes(out[o + i * size : o + i * size + s]) for i, s in enumerate(run)])
        o += size * len(run)
    # what one call per super-packet and `seal` per packet give (the same keys, the same start)
    one = [[b.seal(s, nh, 0.0) for s in ss] for ss, (_, _, _, nh) in zip(segs, laid, strict=True)]
    assert got_pkts == one and sizes == [[len(p) for p in run] for run in one]
    assert (a.seq_out, a.counters.packets_out, a.counters.bytes_out) == (
        b.seq_out, b.counters.packets_out, b.counters.bytes_out)
    opened = [rx.open(p) for run in got_pkts for p in run]
    assert opened == [(nh, s) for ss, (_, _, _, nh) in zip(segs, laid, strict=True) for s in ss]


def test_seal_into_refuses_what_it_cannot_do() -> None:
    for encr, bits, integ in ((EncrId.AES_GCM_8, 128, IntegId.NONE), (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)):
        el, il = key_lengths(encr, bits, integ)
        sa = EspSa(0x99, encr, bits, os.urandom(el), integ, os.urandom(il))
        assert not sa.seals_into
        with pytest.raises(LocalError):
            sa.seal_into([(bytearray(64), 32, [20], 4)], bytearray())
    a, _ = sa_pair(EncrId.AES_GCM_16, 128)
    assert a.seals_into
    with pytest.raises(LocalError):  # packets of different lengths cannot leave in one UDP_SEGMENT send
        a.seal_into([(bytearray(200), 100, [20, 40], 4)], bytearray())
    with pytest.raises(LocalError):  # ... nor runs of different lengths share one layout
        a.seal_into([(bytearray(200), 100, [40, 40], 4), (bytearray(200), 100, [20, 20], 4)], bytearray())
    with pytest.raises(LocalError):
        a.seal_into([], bytearray())
    a.seq_out = 0xFFFFFFFF - 3  # RFC 4303 3.3.3: the counter must not cycle, whichever run would pass it
    with pytest.raises(SequenceExhaustedError):
        a.seal_into([(bytearray(200), 100, [40, 40], 4), (bytearray(200), 100, [40, 40], 4)], bytearray())
    assert a.seq_out == 0xFFFFFFFF - 3 and a.counters.packets_out == 0
    a.seal_into([(bytearray(200), 100, [40, 40], 4), (bytearray(200), 100, [40], 4)], bytearray())
    assert a.seq_out == 0xFFFFFFFF and a.counters.packets_out == 3  # the last sequence number is still used


@pytest.mark.parametrize("encr,bits", [(EncrId.AES_GCM_16, 128), (EncrId.CHACHA20_POLY1305, 256),
                                       (EncrId.AES_CCM_16, 256)])
def test_open_into_equals_open_many(encr: EncrId, bits: int) -> None:
    tx, rx, ref = sa_trio(encr, bits)  # `ref` opens packet by packet
    data, sizes, segs = sealed_run(tx, os.urandom(9 * 1348 + 500), 1348)
    plain = bytearray()
    lengths = rx.open_into(memoryview(data), sizes[0], len(sizes), sizes[-1], plain, 7.0)
    assert lengths is not None and laid_out(plain, sizes[0], lengths) == segs
    packets = [data[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    assert [r[1] for r in ref.open_many(packets, 7.0)] == segs  # type: ignore[index]
    assert (rx.window.top, rx.window.bitmap) == (ref.window.top, ref.window.bitmap)
    assert rx.counters == ref.counters


def test_open_into_takes_a_run_with_a_gap() -> None:
    """A lost packet leaves a gap in the sequence numbers: still new and ascending, so the run is
    opened whole and the window marks exactly the packets that arrived."""
    tx, rx, ref = sa_trio(EncrId.AES_GCM_16, 128)
    data, sizes, segs = sealed_run(tx, os.urandom(6 * 1000), 1000)
    size = sizes[0]
    keep = [0, 1, 3, 4]  # full-size packets only; the fourth (index 2) was lost
    run = b"".join(data[i * size : (i + 1) * size] for i in keep)
    plain = bytearray()
    lengths = rx.open_into(memoryview(run), size, len(keep), size, plain)
    assert lengths is not None and laid_out(plain, size, lengths) == [segs[i] for i in keep]
    ref.open_many([data[i * size : (i + 1) * size] for i in keep])
    assert (rx.window.top, rx.window.bitmap) == (ref.window.top, ref.window.bitmap)


def test_open_into_refuses_without_changing_state() -> None:
    """Anything but the common case returns None with the window and counters untouched; open_many then
    drops and counts the bad packets (RFC 4303 3.4.3: the window moves only for authenticated packets)."""
    tx, rx = sa_pair(EncrId.AES_GCM_16, 128)
    data, sizes, _ = sealed_run(tx, os.urandom(6 * 1000), 1000)
    size, n, tail = sizes[0], len(sizes), sizes[-1]
    plain = bytearray()

    def refused(buf: bytes) -> None:
        before = (rx.window.top, rx.window.bitmap, rx.counters.packets_in, rx.counters.drop_bad_icv)
        assert rx.open_into(memoryview(buf), size, n, tail, plain) is None
        assert (rx.window.top, rx.window.bitmap, rx.counters.packets_in, rx.counters.drop_bad_icv) == before

    bad = bytearray(data)
    bad[3 * size + 40] ^= 1  # the fourth packet's ciphertext
    refused(bytes(bad))
    other = bytearray(data)
    other[2 * size : 2 * size + 4] = b"\0\0\0\0"  # an IKE message (non-ESP marker) of the same size inside
    refused(bytes(other))
    swapped = data[size : 2 * size] + data[:size] + data[2 * size :]  # reordered
    refused(swapped)
    sad = InboundSad()
    sad.add(rx)
    res = sad.open_batch([bytes(bad[i * size : i * size + (size if i < n - 1 else tail)]) for i in range(n)])
    assert [type(r).__name__ for r in res].count("EspIntegrityError") == 1
    assert rx.counters.drop_bad_icv == 1 and rx.counters.packets_in == n - 1
    refused(data)  # now every sequence number but one is in the window: a replay
    esn_tx, esn_rx = sa_pair(EncrId.AES_GCM_16, 128, esn=True)
    edata, esizes, _ = sealed_run(esn_tx, os.urandom(3000), 1000)
    assert esn_rx.open_into(memoryview(edata), esizes[0], len(esizes), esizes[-1], plain) is None


@pytest.mark.parametrize("at,octet", [(-4, 9), (-3, 1), (-2, 3), (-1, 59)])  # padding, Pad Length, Next Header
def test_open_into_refuses_a_bad_trailer_inside_a_run(at: int, octet: int) -> None:
    """One full-size packet of a run with a wrong trailer octet (RFC 4303 2.4, 2.6) under a valid ICV:
    open_into leaves the run to open_many (nothing changed), which drops that packet (bad padding) or
    hands its next header up, the others opened."""
    key = bytes(range(20))
    tx, rx, ref = (EspSa(0x4242, EncrId.AES_GCM_16, 128, key) for _ in range(3))
    data, sizes, segs = sealed_run(tx, os.urandom(6 * 1000 + 10), 1000)
    size, n, tail = sizes[0], len(sizes), sizes[-1]
    aead = AESGCM(key[:16])
    k = 2 * size  # the third packet: its trailer is padding 1 2, Pad Length 2, Next Header 4
    nonce, aad = key[16:] + data[k + 8 : k + 16], data[k : k + 8]
    inner = bytearray(aead.decrypt(nonce, data[k + 16 : k + size], aad))
    assert inner[-4:] == b"\x01\x02\x02\x04"
    inner[at] = octet
    bad = data[: k + 16] + aead.encrypt(nonce, bytes(inner), aad) + data[k + size :]
    before = (rx.window.top, rx.window.bitmap, rx.counters.packets_in)
    assert rx.open_into(memoryview(bad), size, n, tail, bytearray()) is None
    assert (rx.window.top, rx.window.bitmap, rx.counters.packets_in) == before
    res = rx.open_many([bad[i * size : i * size + (size if i < n - 1 else tail)] for i in range(n)])
    want = ref.open_many([data[i * size : i * size + (size if i < n - 1 else tail)] for i in range(n)])
    assert [r for i, r in enumerate(res) if i != 2] == [w for i, w in enumerate(want) if i != 2]
    assert isinstance(res[2], EspPaddingError) if at < -1 else res[2] == (59, segs[2])


def test_replay_window_update_run_equals_updates() -> None:
    for size, start, count in ((128, 3, 47), (128, 100, 200), (64, 5, 3), (1024, 900, 64)):
        a, b = ReplayWindow(size), ReplayWindow(size)
        for w in (a, b):
            for seq in sorted({1, 3, start}):
                w.update(seq)
        a.update_run(start + 1, count)
        for seq in range(start + 1, start + count + 1):
            b.update(seq)
        assert (a.top, a.bitmap) == (b.top, b.bitmap)
    with pytest.raises(ValueError):
        ReplayWindow(128).update_run(0, 3)


@pytest.mark.parametrize("v6", [False, True])
def test_merge_run_equals_coalescer(v6: bool) -> None:
    payload = os.urandom(30 * 1348 + 200)
    frame = tcp_packet(v6, payload, options=OPTS)
    plain = bytearray()
    laid = segment_into(frame, gso_hdr(v6, 1348, OPTS), plain)
    assert laid is not None
    frames = merge_run(plain, *laid)
    c = Coalescer()
    c.add_all(laid_out(plain, *laid))
    assert frames is not None
    assert [merged_packet(f) for f in frames] == [merged_packet(f) for f in c.frames()]


def test_merge_run_splits_at_the_size_limit() -> None:
    plain = bytearray()
    laid = segment_into(tcp_packet(False, os.urandom(20 * 1348), options=OPTS), gso_hdr(False, 1348, OPTS), plain)
    assert laid is not None
    frames = merge_run(plain, *laid, max_size=14000)  # as 64 segments of one GRO read against 64 KiB
    assert frames is not None and len(frames) == 2
    got = [merged_packet(f) for f in frames]
    assert all(len(pkt) <= 14000 for _, pkt in got)
    assert b"".join(pkt[52:] for _, pkt in got) == b"".join(s[52:] for s in laid_out(plain, *laid))
    assert got[0][1][33] == 0x10 and got[1][1][33] == 0x18  # PSH only on the write with the last segment


def test_merge_run_refuses_what_coalescer_would_not_merge() -> None:
    payload = os.urandom(8 * 1000)
    plain = bytearray()
    laid = segment_into(tcp_packet(False, payload, options=OPTS), gso_hdr(False, 1000, OPTS), plain)
    assert laid is not None
    stride, lengths = laid

    def mutated(i: int, at: int, value: int) -> bytearray:
        p = bytearray(plain)
        p[i * stride + at] ^= value
        return p

    assert merge_run(plain, stride, lengths) is not None
    assert merge_run(mutated(3, 300, 1), stride, lengths) is None  # a bad TCP checksum
    assert merge_run(mutated(len(lengths) - 1, 300, 1), stride, lengths) is None  # in the last one (full size)
    short = bytearray()
    laid = segment_into(tcp_packet(False, payload[:-10], options=OPTS), gso_hdr(False, 1000, OPTS), short)
    assert laid is not None and laid[1][-1] < laid[1][0]
    assert merge_run(short, *laid) is not None
    short[(len(laid[1]) - 1) * laid[0] + 300] ^= 1
    assert merge_run(short, *laid) is None  # in the last one (shorter)
    assert merge_run(mutated(3, 20 + 7, 1), stride, lengths) is None  # a sequence gap
    assert merge_run(mutated(3, 20 + 13, 0x08), stride, lengths) is None  # PSH in the middle
    assert merge_run(mutated(3, 20 + 1, 1), stride, lengths) is None  # another connection (port)
    assert merge_run(plain, stride, lengths[:1]) is None  # one packet: nothing to merge
    for i, at, fix in ((3, 3, 11), (len(lengths) - 1, 3, 11), (len(lengths) - 1, 20 + 13, 20 + 17)):
        # another IP length (the header checksum fixed to match), or FIN on the last (the TCP checksum fixed)
        p = bytearray(plain)
        p[i * stride + at] += 1
        p[i * stride + fix] -= 1
        assert merge_run(p, stride, lengths) is None
    for i in (3, len(lengths) - 1):  # another ack and window, the checksum still right (their sum unchanged)
        p = bytearray(plain)
        p[i * stride + 20 + 11] += 1  # ack 555: low octet
        p[i * stride + 20 + 15] -= 1  # window 502: low octet
        assert merge_run(p, stride, lengths) is None


@pytest.mark.parametrize("v6", [False, True])
def test_super_packet_cut_sealed_opened_and_merged_equals_the_input(v6: bool) -> None:
    tx, rx = sa_pair(EncrId.AES_GCM_16, 128)
    payload = os.urandom(40 * 1348 + 321)
    frame = tcp_packet(v6, payload, flags=0x18, options=OPTS)
    data, sizes, _ = sealed_run(tx, payload, 1348, v6)
    plain = bytearray()
    lengths = rx.open_into(memoryview(data), sizes[0], len(sizes), sizes[-1], plain)
    assert lengths is not None
    frames = merge_run(plain, sizes[0], lengths)
    assert frames is not None and len(frames) == 1
    hdr, pkt = merged_packet(frames[0])
    off = 40 if v6 else 20
    assert hdr.gso_size == 1348 and pkt[off + 32 :] == payload
    same = (slice(6, 40), slice(40, 40 + 4), slice(40 + 8, 40 + 13)) if v6 else (
        slice(6, 10), slice(12, 24), slice(28, 33))  # addresses, protocol, TTL, ports, ack, data offset
    assert all(pkt[sl] == frame[sl] for sl in same)
    assert struct.unpack_from(">I", pkt, off + 4) == struct.unpack_from(">I", frame, off + 4)  # the first seq
    done = bytearray(pkt)  # CHECKSUM_PARTIAL completed as the kernel does: a valid packet
    assert struct.unpack_from(">H", pkt, off + 16)[0] == rfc1071(pseudo(pkt, len(pkt) - off))
    done[off + 16 : off + 18] = struct.pack(">H", ~rfc1071(bytes(done[off:])) & 0xFFFF)
    assert l4_ok(bytes(done))
