"""The TSO super-packets of one TUN wake-up segmented together (core_ike/io/offload.py
`segment_frames_into`: each frame laid out by `lay_frame`, the rest done once per group of frames of one
layout and size by `finish_frames`) give exactly the packets `segment` gives frame by frame: frames of
one group (same size and headers but for sequence number, IPv4 ID, ack, window and flags), frames of
several groups (IPv4 and IPv6 of one segment length, other sizes) in one buffer, and `EspSa.seal_into`
over runs lying one after the other in that buffer gives the packets `seal` gives."""

from __future__ import annotations

import os
import struct

import pytest

from core_ike.constants import EncrId
from core_ike.esp import EspSa
from core_ike.io.offload import (
    OffloadError,
    TsoLayout,
    VnetHdr,
    finish_frames,
    lay_frame,
    segment,
    segment_frames_into,
    tso_layout,
)
from tests.unit.esp.test_offload import gso_hdr, l4_ok, tcp_packet

OPTS = b"\x01\x01\x08\x0a" + bytes(range(8))
KEY = bytes(range(20))


def with_ack_window(frame: bytes, v6: bool, ack: int, window: int) -> bytes:
    """`frame` with another TCP ack number and window (the partial checksum as the kernel leaves it
    covers neither: they are the headers' constant words, which differ between a wake-up's frames)."""
    off = 40 if v6 else 20
    return frame[: off + 8] + struct.pack(">I", ack) + frame[off + 12 : off + 14] + struct.pack(">H", window) + frame[off + 16 :]


def laid_out(plain: bytearray, stride: int, lengths: list[list[int]]) -> list[list[bytes]]:
    out, row = [], 0
    for frame_lengths in lengths:
        out.append([bytes(plain[(row + i) * stride : (row + i) * stride + n]) for i, n in enumerate(frame_lengths)])
        row += len(frame_lengths)
    return out


def frames_of(specs: list[tuple[bool, int, int]]) -> list[tuple[bytes, VnetHdr]]:
    """(v6, payload size, flags) per frame: consecutive sequence numbers and IPv4 IDs, acks and windows
    that differ per frame."""
    out: list[tuple[bytes, VnetHdr]] = []
    seq = 0xFFFF0000  # the sequence numbers wrap within the batch
    for i, (v6, size, flags) in enumerate(specs):
        frame = tcp_packet(v6, os.urandom(size), seq=seq, flags=flags, ip_id=(0xFFF0 + 3 * i) & 0xFFFF, options=OPTS)
        out.append((with_ack_window(frame, v6, 1000 + 77 * i, 500 + i), gso_hdr(v6, 1300 - (20 if v6 else 0), OPTS)))
        seq = (seq + size) & 0xFFFFFFFF
    return out


def kept(frames: list[tuple[bytes, VnetHdr]]) -> list[tuple[bytes, TsoLayout]]:
    out = []
    for f, h in frames:
        layout = tso_layout(f, h)
        assert layout is not None
        out.append((f, layout))
    return out


@pytest.mark.parametrize(
    "specs",
    [
        [(False, 44 * 1300, 0x10)] * 8,  # one group: a wake-up of full super-packets
        [(True, 10 * 1280 + 7, 0x10)] * 3,
        [(False, 9 * 1300 + 77, 0x10), (True, 5 * 1280 + 1, 0x18), (True, 5 * 1280 + 1, 0x10),
         (False, 3 * 1300, 0x80 | 0x10), (False, 3 * 1300, 0x19)],  # groups of other layouts and sizes; CWR, FIN
        [(False, 4 * 1301 + 3, 0x10)] * 2,  # MSS not a multiple of 4: zero-padded payload sums
    ],
)
def test_segment_frames_into_equals_segment(specs: list[tuple[bool, int, int]]) -> None:
    frames = frames_of(specs)
    if specs[-1] == (False, 4 * 1301 + 3, 0x10):
        frames = [(f, gso_hdr(False, 1301, OPTS)) for f, _ in frames]
    plain = bytearray(b"\xee" * 1000)  # a used buffer: grown and overwritten
    stride, lengths = segment_frames_into(kept(frames), plain)
    got = laid_out(plain, stride, lengths)
    want = [[bytes(s) for s in segment(f, h)] for f, h in frames]
    assert got == want
    assert all(l4_ok(s) for ss in got for s in ss)
    assert stride >= max(map(max, lengths)) + 5  # room for ESP's trailer behind every segment


def test_lay_frame_then_finish_frames_is_segment_frames_into() -> None:
    """The two steps as the seal_batch step runs them apart: the same rows."""
    frames = frames_of([(False, 7 * 1300, 0x10), (False, 7 * 1300, 0x10), (False, 2 * 1300 + 1, 0x18)])
    frames_kept = kept(frames)
    whole = bytearray()
    stride, lengths = segment_frames_into(frames_kept, whole)
    apart, row = bytearray(len(whole)), 0
    for (f, lay), frame_lengths in zip(frames_kept, lengths, strict=True):
        lay_frame(apart, row, stride, f, lay)
        row += len(frame_lengths)
    finish_frames(apart, stride, [(lay, len(f)) for f, lay in frames_kept])
    assert laid_out(apart, stride, lengths) == laid_out(whole, stride, lengths)


def test_segment_frames_into_refuses_two_segment_lengths() -> None:
    a, b = frames_of([(False, 3 * 1300, 0x10)])[0][0], tcp_packet(False, os.urandom(3000), options=OPTS)
    la, lb = tso_layout(a, gso_hdr(False, 1300, OPTS)), tso_layout(b, gso_hdr(False, 1000, OPTS))
    assert la is not None and lb is not None
    with pytest.raises(OffloadError):
        segment_frames_into([(a, la), (b, lb)], bytearray())


def test_seal_into_runs_in_one_buffer_equal_seal() -> None:
    """Runs lying one after the other in one buffer (as `segment_frames_into` leaves a wake-up's frames):
    sealed in one call, the packets `seal` gives segment by segment, in order."""
    frames = frames_of([(False, 6 * 1300 + 5, 0x10), (True, 4 * 1280, 0x10), (False, 6 * 1300 + 5, 0x18)])
    plain = bytearray()
    stride, lengths = segment_frames_into(kept(frames), plain)
    runs = [(plain, stride, frame_lengths, 41 if f[0] >> 4 == 6 else 4)
            for (f, _), frame_lengths in zip(frames, lengths, strict=True)]
    segs = laid_out(plain, stride, lengths)
    a, b = EspSa(0x77, EncrId.AES_GCM_16, 128, KEY), EspSa(0x77, EncrId.AES_GCM_16, 128, KEY)
    out = bytearray()
    size, sizes = a.seal_into(runs, out)
    got, o = [], 0
    for run in sizes:
        got.append([bytes(out[o + i * size : o + i * size + s]) for i, s in enumerate(run)])
        o += size * len(run)
    assert got == [[b.seal(s, nh) for s in ss] for ss, (*_, nh) in zip(segs, runs, strict=True)]
    assert (a.seq_out, a.counters.packets_out, a.counters.bytes_out) == (
        b.seq_out, b.counters.packets_out, b.counters.bytes_out)
