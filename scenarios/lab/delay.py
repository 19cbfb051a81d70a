"""Userspace delay/loss "hub" on TAP devices, in place of a bridge (docs/nat-lab.md §5: no netem here).

One TAP device per port, each created inside its own namespace (``NS:IFNAME``); every Ethernet frame read
from one port is written to all other ports after a fixed one-way delay, or dropped with probability
``--loss``. Frame order per direction is preserved (one fixed delay, FIFO timers). The TAP devices are not
persistent: they disappear when this process ends.

Run as a script (the lab starts it with :meth:`Lab.popen` and waits for the ``ready`` line)::

    python delay.py --delay-ms 20 pt_natA:wan0 pt_natB:wan0 pt_carol:eth0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import random
import struct
import sys
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(nsname: str, ifname: str) -> int:
    """Create TAP ``ifname`` inside namespace ``nsname``; returns the non-blocking fd."""
    from pyroute2 import netns  # local import: the module's pure parts stay importable anywhere

    netns.pushns(nsname)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    finally:
        netns.popns()
    return fd


class Hub:
    """Forward frames between TAP fds with a fixed delay and optional random loss."""

    def __init__(self, fds: Sequence[int], delay: float, loss: float = 0.0, seed: int | None = None) -> None:
        self.fds = list(fds)
        self.delay = delay
        self.loss = loss
        self.rng = random.Random(seed)
        self.forwarded = 0
        self.dropped = 0
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        for fd in self.fds:
            self.loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        while True:
            try:
                frame = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not frame:
                return
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if self.delay > 0:
                self.loop.call_later(self.delay, self._emit, fd, frame)
            else:
                self._emit(fd, frame)

    def _emit(self, src: int, frame: bytes) -> None:
        self.forwarded += 1
        for fd in self.fds:
            if fd != src:
                with contextlib.suppress(OSError):  # port down or queue full: like a lost frame
                    os.write(fd, frame)


async def _serve(ports: Sequence[str], delay_ms: float, loss: float, seed: int | None) -> None:
    fds = []
    for port in ports:
        nsname, _, ifname = port.rpartition(":")
        fds.append(open_tap(nsname, ifname))
    hub = Hub(fds, delay_ms / 1000.0, loss, seed)
    hub.start()
    print(f"ready delay_ms={delay_ms} loss={loss} ports={' '.join(ports)}", flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per frame")
    ap.add_argument("--loss", type=float, default=0.0, help="drop probability per frame")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("ports", nargs="+", help="NS:IFNAME of each TAP port")
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.ports, args.delay_ms, args.loss, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
