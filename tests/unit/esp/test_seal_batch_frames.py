"""The seal_batch step over the TSO super-packets of one TUN wake-up (core_ike/io/batchsteps.py
`_seal_laid_out` / `_seal_pending`): the super-packets kept and sealed in one `EspSa.seal_into` call leave
as exactly the ESP datagrams that sealing each segment with `EspSa.seal`, frame by frame, gives: the same
sequence numbers, IVs and ICVs, in the order the TUN device gave the frames, with a frame for the per-packet
path (one plain packet) in between, past the cap of super-packets kept per call, and with the SA's counters
equal. Real sockets: a SOCK_SEQPACKET pair stands in for the TUN device (one frame per read), the ESP
leaves by UDP_SEGMENT over loopback to a plain UDP socket (the kernel cuts each send into datagrams)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from core_ike.constants import EncrId
from core_ike.esp import EspSa
from core_ike.io.batchsteps import SEAL_FRAMES
from core_ike.io.dataplane import Direction, PolicyParams, SaParams, TrafficSelector
from core_ike.io.fastpath import DEFAULT_STEPS
from core_ike.io.offload import F_NEEDS_CSUM, GSO_NONE, VnetHdr, segment
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit.esp.test_offload import DST4, DST6, SRC4, SRC6, gso_hdr, tcp_packet

OPTS = b"\x01\x01\x08\x0a" + bytes(range(8))
KEY = bytes(range(20))
SPI = 0x5151


class Transport:
    """What UdpEspIo asks of the IKE transport when sending: the socket towards a peer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.stats = {"rx": 0, "esp": 0}

    def socket_for(self, local: tuple[str, int]) -> socket.socket:
        return self.sock


class Loop:
    def add_reader(self, *args: Any) -> None:
        pass

    def remove_reader(self, *args: Any) -> None:
        pass


@pytest.fixture
def sender() -> Iterator[tuple[UserspaceDataPlane, socket.socket, socket.socket]]:
    """(data plane, the TUN device's other end, the peer's UDP socket)."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    peer.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    tun_in, tun_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun_in.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    tun_out.setblocking(False)
    dp = UserspaceDataPlane(clock=lambda: 5.0, offload=DEFAULT_STEPS)
    for d in (Direction.OUT, Direction.IN):
        for lo, re in ((SRC4 + "/32", DST4 + "/32"), (SRC6 + "/128", DST6 + "/128")):
            dp.install_policy(PolicyParams(TrafficSelector.parse(lo), TrafficSelector.parse(re), d, reqid=1))
    dp.install_sa(SaParams(spi=SPI, direction=Direction.OUT, src="127.0.0.1", dst="127.0.0.1", encr_id=EncrId.AES_GCM_16,
                           encr_key_bits=128, encr_key=KEY, encap=True, reqid=1, dst_port=peer.getsockname()[1]))
    dp._vnet = dp._tso = True  # as `start` leaves them on a kernel that takes the tso step
    dp._loop = Loop()  # type: ignore[assignment]
    dp.attach_transport(Transport(out), 4500)
    dp._tun_fd = tun_out.fileno()
    yield dp, tun_in, peer
    for s in (peer, out, tun_in, tun_out):
        s.close()


def received(peer: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(peer.recv(65536))
        except BlockingIOError:
            return got


@pytest.mark.parametrize("frames", [3, SEAL_FRAMES + 3])
def test_wakeup_of_frames_equals_frame_by_frame(
    sender: tuple[UserspaceDataPlane, socket.socket, socket.socket], frames: int
) -> None:
    dp, tun, peer = sender
    seq = 1000
    queued: list[tuple[bytes, VnetHdr]] = []
    for i in range(frames):
        v6 = i % 3 == 1  # IPv4 and IPv6 super-packets of one segment length, next header 4 and 41
        payload = os.urandom((4 + i % 3) * 1300 + 17 * i)  # each with a shorter last segment (or none)
        queued.append((tcp_packet(v6, payload, seq=seq, flags=0x10, options=OPTS),
                       gso_hdr(v6, 1300 - (20 if v6 else 0), OPTS)))
        seq += len(payload)
        if i == 1:  # a plain packet between super-packets: the per-packet path, in its place
            queued.append((tcp_packet(False, b"p" * 200, seq=seq, flags=0x18, partial=False),
                           VnetHdr(0, GSO_NONE, 0, 0, 0, 0)))
            seq += 200
    for frame, hdr in queued:
        tun.send(hdr.pack() + frame)
    dp._on_tun_readable()
    ref = EspSa(SPI, EncrId.AES_GCM_16, 128, KEY)  # the same SA, sealing segment by segment
    want = [ref.seal(s, 41 if s[0] >> 4 == 6 else 4, 5.0) for frame, hdr in queued for s in segment(frame, hdr)]
    assert received(peer) == want  # sequence numbers, IVs, ICVs and order
    esp = dp._sas[(SPI, Direction.OUT)].esp
    assert (esp.seq_out, esp.counters.packets_out, esp.counters.bytes_out) == (
        ref.seq_out, ref.counters.packets_out, ref.counters.bytes_out)
    st = dp.stats()
    assert st["batch_seals"] == frames and st["tso_frames"] == frames and st["drop_send_error"] == 0
    assert (st["tun_wakeups"], st["tun_frames"]) == (1, len(queued))  # every frame read in the one wake-up
    # at most SEAL_FRAMES super-packets per seal_into call: the buffers kept stay bounded
    assert len(dp._seal_plains) == min(frames, SEAL_FRAMES) and not dp._seal_runs


def test_other_sa_mid_batch_keeps_order(sender: tuple[UserspaceDataPlane, socket.socket, socket.socket]) -> None:
    """A super-packet of a flow no SA covers between two of the SA's: dropped (no policy), the others
    leave in order, sealed with consecutive sequence numbers."""
    dp, tun, peer = sender
    frames = [tcp_packet(False, os.urandom(3 * 1300 + 5), seq=1, flags=0x10, options=OPTS),
              tcp_packet(False, os.urandom(3 * 1300), seq=1, flags=0x10, options=OPTS, src="10.77.0.1"),
              tcp_packet(False, os.urandom(2 * 1300 + 9), seq=3906, flags=0x10, options=OPTS)]
    hdr = gso_hdr(False, 1300, OPTS)
    for f in frames:
        tun.send(hdr.pack() + f)
    dp._on_tun_readable()
    ref = EspSa(SPI, EncrId.AES_GCM_16, 128, KEY)
    assert received(peer) == [ref.seal(s, 4, 5.0) for f in (frames[0], frames[2]) for s in segment(f, hdr)]
    assert dp.stats()["drop_no_policy"] == 3  # its three segments


def test_plain_frame_needs_csum_passes(sender: tuple[UserspaceDataPlane, socket.socket, socket.socket]) -> None:
    """A lone packet with a partial checksum (NEEDS_CSUM, no GSO) after a super-packet: completed and sealed
    after the super-packet's segments."""
    dp, tun, peer = sender
    big = tcp_packet(False, os.urandom(2 * 1300 + 1), seq=1, flags=0x10, options=OPTS)
    small = tcp_packet(False, b"q" * 100, seq=2602, flags=0x18)
    small_hdr = VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16)
    tun.send(gso_hdr(False, 1300, OPTS).pack() + big)
    tun.send(small_hdr.pack() + small)
    dp._on_tun_readable()
    ref = EspSa(SPI, EncrId.AES_GCM_16, 128, KEY)
    want = [ref.seal(s, 4, 5.0) for s in segment(big, gso_hdr(False, 1300, OPTS))]
    want += [ref.seal(s, 4, 5.0) for s in segment(small, small_hdr)]
    assert received(peer) == want
