#!/usr/bin/env python3
"""The userspace ESP data plane's cost per TSO super-packet, counted in instructions (callgrind), through
the daemon's own read handlers on real sockets: the sender's TUN reader (`_on_tun_readable`: segment_into,
seal_into, UDP_SEGMENT send) and the receiver's NAT-T reader (`UdpEspIo._readable`: UDP_GRO reads,
open_into, merge_run, TUN write).

Usage:
    bench/esp_batch_cost.py --side send|both --wakeups N [--frames K]   (one run, for callgrind)
    bench/esp_batch_cost.py --count [--frames K] [--valgrind valgrind]  (instructions per super-packet)

A wake-up finds K super-packets of 44 MSS-sized segments (what one UDP_SEGMENT send carries,
core_ike/io/fastpath.py tun_gso_segs) queued on a SOCK_SEQPACKET socket standing in for the TUN device;
the sender's datagrams go over loopback to a UDP_GRO socket that the receiver reads after each wake-up,
its decrypted packets to /dev/null. `--count` runs callgrind at two wake-up counts and divides the
difference (start-up and set-up cancel out): send = the sender alone, receive = both sides less that.
Syscalls' kernel work is not counted (callgrind counts user-space instructions only).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core_ike.constants import EncrId  # noqa: E402
from core_ike.io.dataplane import Direction, PolicyParams, SaParams, TrafficSelector  # noqa: E402
from core_ike.io.fastpath import DEFAULT_STEPS, enable_gro, tun_gso_segs  # noqa: E402
from core_ike.io.offload import F_NEEDS_CSUM, GSO_TCPV4, VnetHdr  # noqa: E402
from core_ike.io.userspace import UserspaceDataPlane  # noqa: E402

A_IN, B_IN = "10.10.1.1", "10.10.2.1"
MTU = 1400
MSS = MTU - 52  # IPv4 + TCP with timestamps
SEGS = tun_gso_segs(MTU)
KEY = bytes(range(20))


class Transport:
    """What UdpEspIo asks of the IKE transport: its NAT-T sockets, stats, the socket towards a peer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sockets = {sock.getsockname(): sock}
        self.stats = {"rx": 0, "esp": 0}

    def socket_for(self, local: tuple[str, int]) -> socket.socket:
        return self.sock

    def deliver_read(self, *args: Any) -> None:
        raise AssertionError("non-ESP datagram")

    def flush(self) -> None:
        pass


class Loop:
    def add_reader(self, *args: Any) -> None:
        pass

    def remove_reader(self, *args: Any) -> None:
        pass


def frame(seq: int) -> bytes:
    opts = b"\x01\x01\x08\x0a" + bytes(8)
    payload = bytes(SEGS * MSS)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 1, 8 << 4, 0x10, 502, 0, 0) + opts
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), seq & 0xFFFF, 0x4000, 64, 6, 0,
                     socket.inet_aton(A_IN), socket.inet_aton(B_IN))
    hdr = VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 52, MSS, 20, 16).pack()
    return hdr + ip + tcp + payload


def plane(lo: str, re_: str, direction: Direction, sock: socket.socket, peer: tuple[str, int]) -> UserspaceDataPlane:
    dp = UserspaceDataPlane(clock=lambda: 1.0, offload=DEFAULT_STEPS, mtu=MTU)
    for d in (Direction.OUT, Direction.IN):
        dp.install_policy(PolicyParams(TrafficSelector.parse(lo + "/24"), TrafficSelector.parse(re_ + "/24"), d,
                                       reqid=1))
    dp.install_sa(SaParams(spi=0x1000, direction=direction, src="127.0.0.1", dst=peer[0], encr_id=EncrId.AES_GCM_16,
                           encr_key_bits=128, encr_key=KEY, encap=True, reqid=1, dst_port=peer[1],
                           src_port=peer[1], replay_window=1024))
    dp._vnet = dp._tso = True  # as `start` leaves them with the tso step on a kernel that takes it
    dp._loop = Loop()  # type: ignore[assignment]
    dp.attach_transport(Transport(sock), sock.getsockname()[1])
    return dp


def run(side: str, wakeups: int, frames: int) -> None:
    rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rsock.bind(("127.0.0.1", 0))
    rsock.setblocking(False)
    ssock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ssock.bind(("127.0.0.1", 0))
    tx = plane(A_IN, B_IN, Direction.OUT, ssock, rsock.getsockname())
    rx = plane(B_IN, A_IN, Direction.IN, rsock, ssock.getsockname())
    assert tx._udp is not None and rx._udp is not None and rx._udp.gro
    enable_gro(rsock)
    tun_in, tun_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (tun_in, tun_out):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    tun_out.setblocking(False)
    tx._tun_fd = tun_out.fileno()
    rx._tun_fd = os.open(os.devnull, os.O_WRONLY)
    frames_ = [frame(1 + i * SEGS * MSS) for i in range(frames)]
    key = rsock.getsockname()
    assert rx._udp is not None

    def wakeup(_: int) -> int:
        for f in frames_:
            tun_in.send(f)
        tx._on_tun_readable()
        if side == "both":
            rx._udp._readable(rsock, key)  # type: ignore[union-attr]
        else:
            while True:
                try:
                    rsock.recv(65536)
                except BlockingIOError:
                    break
        return 0

    # the wake-ups run inside one C call (sorted's key function), so that callgrind counts them alone
    # (--toggle-collect=builtin_sorted): no start-up, imports or set-up in the figures
    wakeup(0)  # first calls import lazily (route_source's module) and cut the kept slices (core_ike/esp/views.py)
    sorted(range(wakeups), key=wakeup)
    st_tx, st_rx = tx.stats(), rx.stats()
    want = (wakeups + 1) * frames * SEGS
    assert st_tx["esp_udp_sends"] == want and st_tx["drop_send_error"] == 0, st_tx
    if side == "both":
        assert rx._sas[(0x1000, Direction.IN)].esp.counters.packets_in == want, st_rx
        assert st_rx["esp_run_reads"] == (wakeups + 1) * frames, st_rx


def callgrind(valgrind: str, side: str, wakeups: int, frames: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run([valgrind, "--tool=callgrind", "--toggle-collect=builtin_sorted", f"--callgrind-out-file={out}",
                        sys.executable, __file__,
                        "--side", side, "--wakeups", str(wakeups), "--frames", str(frames)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})  # same dict layouts each run
        m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
        assert m is not None
        return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("send", "both"), default="both")
    ap.add_argument("--wakeups", type=int, default=10)
    ap.add_argument("--frames", type=int, default=4, help="super-packets per wake-up")
    ap.add_argument("--count", action="store_true", help="callgrind instructions per super-packet")
    ap.add_argument("--valgrind", default="valgrind")
    ap.add_argument("--low", type=int, default=5)
    ap.add_argument("--high", type=int, default=25)
    args = ap.parse_args(argv)
    if not args.count:
        run(args.side, args.wakeups, args.frames)
        return 0
    per = {}
    for side in ("send", "both"):
        lo = callgrind(args.valgrind, side, args.low, args.frames)
        hi = callgrind(args.valgrind, side, args.high, args.frames)
        per[side] = (hi - lo) / ((args.high - args.low) * args.frames)
    send, recv = per["send"], per["both"] - per["send"]
    print(f"{args.frames} super-packets of {SEGS} segments per wake-up: instructions per super-packet "
          f"send {send:,.0f} ({send / SEGS:,.0f} per packet), receive {recv:,.0f} ({recv / SEGS:,.0f} per packet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
