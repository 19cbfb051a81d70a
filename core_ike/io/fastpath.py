"""Kernel offloads for the userspace ESP data plane: the TUN device with a virtio header (TSO reads,
GSO writes), ESP-in-UDP sent with UDP_SEGMENT and received with UDP_GRO.

Each step can be switched off (``[daemon] esp_offload``, docs/configuration.md: a comma list of the
steps to use, ``all`` (the default: every step but ``mmsg``) or ``none``; bench/esp_throughput_iperf.py measures each one):

- ``tso``: the TUN device gets ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (CSUM, TSO4, TSO6): the kernel
  hands over TCP super-packets of up to 64 KiB, which `offload.segment` cuts into MSS-sized
  segments; each still travels in its own ESP packet (RFC 4303 2).
- ``gso``: a run of ESP packets of equal size to one peer leaves in one ``sendmsg`` with
  ``UDP_SEGMENT`` (the kernel cuts it into datagrams; on the wire they are ordinary RFC 3948
  ESP-in-UDP datagrams). With ``tso``, the TUN device's ``gso_max_segs`` is set so that one
  super-packet's ESP packets fit one such send (`tun_gso_segs`).
- ``gro``: the NAT-T socket gets ``UDP_GRO``: one read returns several datagrams of one peer glued
  together, with their size in a control message; they are split before anything else looks at them.
- ``coalesce``: decrypted TCP segments of one flow are written to the TUN device as one GSO packet
  (`offload.Coalescer`).
- ``seal_batch``, ``open_batch``: the same work with fewer Python steps per packet
  (`core_ike.io.batchsteps`).
- ``mmsg`` (only when named): where UDP_GRO is off or refused, the NAT-T socket is read with
  ``recvmmsg`` (up to 64 datagrams a call); where UDP_SEGMENT is off or refused, ESP leaves with
  ``sendmmsg``, the datagrams of one socket to all peers in one call (`core_ike.io.mmsg`). Measured
  slower than one system call per datagram on this path, so not part of ``all``.

When the kernel refuses a step, it is logged once and the data plane goes on without it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import LocalError
from .mmsg import ADDR_LEN, RecvBatch, SendBatch
from .offload import split_gro

log = logging.getLogger("core_ike.io.userspace")
FIONREAD = termios.FIONREAD  # on a UDP socket: the size of the next queued datagram, 0 when none (udp(7))
_ioctl = fcntl.ioctl

OFFLOAD_STEPS = ("tso", "gso", "gro", "coalesce", "seal_batch", "open_batch", "mmsg")
# `all`: every step but mmsg, which costs more than it saves here (a copy and a socket address encoded
# in Python per datagram against one system call: bench/results/esp_throughput_iperf.txt, "tso,mmsg")
DEFAULT_STEPS = frozenset(OFFLOAD_STEPS) - {"mmsg"}

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in older kernels (newer ones allow more)
GSO_MAX_BYTES = 65000  # below the 64 KiB limit of one IP datagram, UDP and IP headers included
_GRO_CMSG = socket.CMSG_SPACE(4)
READ_BATCH = 256
Addr = tuple[str, int]


def offload_steps(value: str | None) -> frozenset[str]:
    """The steps an ``esp_offload`` setting names."""
    text = (value or "all").strip().lower()
    if text == "all":
        return DEFAULT_STEPS
    if text == "none":
        return frozenset()
    steps = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = steps - set(OFFLOAD_STEPS)
    if unknown:
        raise LocalError(f"unknown offload step(s) {', '.join(sorted(unknown))} "
                         f"(steps: {', '.join(OFFLOAD_STEPS)}, or all / none)")
    return steps


def open_tun(name: str, vnet: bool, tso: bool) -> tuple[int, bool, bool]:
    """Open TUN device `name`: (fd, virtio header on?, TSO on?). A kernel that refuses the virtio
    header or the offloads gets a plain device (logged once)."""
    from .dataplane import DataPlaneError

    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    except OSError as e:
        raise DataPlaneError(f"cannot open /dev/net/tun for the userspace data plane: {e.strerror}",
                             e.errno or 0) from None
    flags = IFF_TUN | IFF_NO_PI
    for extra in ((IFF_VNET_HDR, 0) if vnet else (0,)):
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags | extra))
            vnet = bool(extra)
            break
        except OSError as e:
            if extra and e.errno == errno.EINVAL:
                log.info("TUN %s: no virtio header (%s); segmentation offload off", name, e.strerror)
                continue
            os.close(fd)
            hint = {errno.EPERM: " (needs CAP_NET_ADMIN)",
                    errno.EBUSY: " (another daemon on this host uses that name: set [daemon] tun)"}.get(
                        e.errno or 0, "")
            raise DataPlaneError(f"cannot create TUN device {name}: {e.strerror}{hint}", e.errno or 0) from None
    if vnet:
        want = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if tso else 0
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, want)
        except OSError as e:
            log.info("TUN %s: TUNSETOFFLOAD refused (%s); TCP segmentation offload off", name, e.strerror)
            tso = False
    return fd, vnet, tso and vnet


# the largest ESP overhead of a transform `EspSa` runs (AES-CBC with HMAC-SHA2-512-256): header 8,
# IV 16, ICV 32, padding 15, Pad Length and Next Header 2 (RFC 4303 2)
ESP_OVERHEAD_MAX = 73


def tun_gso_segs(mtu: int) -> int:
    """The most TCP segments one TSO super-packet from the TUN device may hold so that their ESP
    packets leave in one UDP_SEGMENT send (GSO_MAX_BYTES): each super-packet is then one send here
    and one UDP_GRO read at the peer, not a full one and a remainder of a few packets (whose fixed
    per-call costs are those of a full one)."""
    return max(2, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // (mtu + ESP_OVERHEAD_MAX)))


def limit_tun_gso(ipr: Any, index: int, name: str, mtu: int) -> None:
    """Set the TUN device's gso_max_segs (`tun_gso_segs`; TCP reads it when a connection starts);
    a kernel that refuses it keeps its default (logged once), at the cost of a second send per
    super-packet."""
    from pyroute2 import NetlinkError  # type: ignore[import-untyped]

    try:
        ipr.link("set", index=index, gso_max_segs=tun_gso_segs(mtu))
    except NetlinkError as e:
        log.info("TUN %s: gso_max_segs refused (%s); super-packets of the kernel's default size", name, e)


def quiet_tun_ipv6(ipr: Any, index: int, name: str) -> None:
    """Set the TUN device's IPv6 address generation mode to none (IFLA_INET6_ADDR_GEN_MODE) before it
    comes up: it gets no link-local address, so the kernel sends no router solicitations (RFC 4861
    6.3.7) or MLD reports of its own into it, which would match no policy and count as
    `drop_no_policy`; IPv6 that routes send into it still flows. A kernel without IPv6 refuses it
    (logged at debug)."""
    from pyroute2 import NetlinkError

    spec = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}  # IN6_ADDR_GEN_MODE_NONE
    try:
        ipr.link("set", index=index, IFLA_AF_SPEC=spec)
    except NetlinkError as e:
        log.debug("TUN %s: IPv6 address generation mode left as it was (%s)", name, e)


def grow_rcvbuf(s: socket.socket, size: int = 4 << 20) -> None:
    """Enlarge an ESP receive socket's buffer: with the default (~200 KB) a TCP burst through the
    tunnel overflows it while the event loop is busy sealing, and every overflow is a TCP loss."""
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


def enable_gro(s: socket.socket) -> bool:
    try:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError as e:
        log.info("UDP_GRO refused on the NAT-T socket (%s); datagrams are read one by one", e.strerror)
        return False


def runs(packets: list[bytes]) -> Iterable[list[bytes]]:
    """Consecutive packets that one UDP_SEGMENT send can carry: all of one size, except that the
    last may be shorter; at most GSO_MAX_SEGMENTS and GSO_MAX_BYTES."""
    run: list[bytes] = []
    size = total = 0
    for p in packets:
        n = len(p)
        if run and (n > size or len(run) >= GSO_MAX_SEGMENTS or total + n > GSO_MAX_BYTES
                    or len(run[-1]) != size):
            yield run
            run = []
        if not run:
            size, total = n, 0
        run.append(p)
        total += n
    if run:
        yield run


class UdpEspIo:
    """The ESP side of the IKE transport's NAT-T sockets: reads them (with UDP_GRO when on), hands
    ESP to `on_esp` as a batch and everything else (IKE, keepalives) back to the transport; sends
    ESP runs with UDP_SEGMENT when on."""

    def __init__(self, transport: Any, natt_port: int, steps: frozenset[str],
                 on_esp: Callable[[list[tuple[bytes, Addr]]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.natt_port = natt_port
        self.gso = "gso" in steps
        self.gro = "gro" in steps
        self.on_esp = on_esp
        self.clock = clock
        self._loop: Any = None
        self._taken: list[tuple[socket.socket, Addr]] = []
        self._gro_on: set[int] = set()
        self._sources: dict[str, tuple[float, socket.socket | None]] = {}
        self.send_errors = 0
        self.gso_sends = 0  # sendmsg calls with UDP_SEGMENT
        self.udp_sends = 0  # ESP datagrams sent
        self.udp_reads = 0
        self.gro_reads = 0  # reads that returned several datagrams
        # wake-ups of the readers: over the ESP datagrams they took (the transport's "esp" count), datagrams
        # per wake-up tells whether batching across a wake-up's reads can pay (bench/esp_throughput_iperf.py)
        self.rx_wakeups = 0
        # `open_batch`: a UDP_GRO read of several datagrams goes whole to `on_run` (buffer, datagram
        # size, count, last one's size, peer); False = not taken (nothing done), split as without it.
        # The buffer is always the same object (`_rxbuf`, longer than the read): the batch steps keep
        # slices of it (core_ike/esp/views.py)
        self.on_run: Callable[[bytearray, int, int, int, Addr], bool] | None = None
        self._rxbuf = bytearray(65536)
        self._queued = array.array("i", [0])  # FIONREAD's answer, written in place
        self.run_reads = 0  # GRO reads `on_run` took whole
        self.mmsg = "mmsg" in steps
        self._rb: RecvBatch | None = None  # made on first use (without GRO / UDP_SEGMENT only)
        self._sb: SendBatch | None = None
        self._sb_sock: socket.socket | None = None  # the socket of what `_sb` holds
        self._peers: dict[bytes, Addr] = {}  # raw socket address -> (ip, port), for recvmmsg reads
        self.mmsg_reads = self.mmsg_sends = 0  # recvmmsg / sendmmsg calls

    def start(self, loop: Any) -> None:
        self._loop = loop
        for key, s in list(self.transport.sockets.items()):
            if key[1] != self.natt_port:
                continue
            if self.gro and enable_gro(s):
                self._gro_on.add(s.fileno())
            loop.remove_reader(s.fileno())
            loop.add_reader(s.fileno(), self._readable, s, key)
            self._taken.append((s, key))

    def counters(self) -> dict[str, int]:
        return {"esp_udp_sends": self.udp_sends, "esp_gso_sends": self.gso_sends,
                "esp_udp_reads": self.udp_reads, "esp_gro_reads": self.gro_reads, "esp_run_reads": self.run_reads,
                "esp_mmsg_reads": self.mmsg_reads, "esp_mmsg_sends": self.mmsg_sends,
                "esp_rx_wakeups": self.rx_wakeups, "esp_datagrams_in": self.transport.stats["esp"]}

    def sockets(self) -> list[socket.socket]:
        return [s for s, _ in self._taken]

    def close(self) -> None:
        """Give the sockets back to the transport (without GRO: it reads datagrams one by one)."""
        for s, key in self._taken:
            if s.fileno() < 0:
                continue
            if s.fileno() in self._gro_on:
                s.setsockopt(SOL_UDP, UDP_GRO, 0)
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
                self._loop.add_reader(s.fileno(), self.transport._readable, s, key)
        self._taken.clear()

    # -- receive -------------------------------------------------------------------------------

    def _readable(self, s: socket.socket, local: Addr) -> None:
        tr = self.transport
        self.rx_wakeups += 1
        gro = s.fileno() in self._gro_on
        if self.mmsg and not gro:
            self._read_mmsg(s, local)
            return
        esp: list[tuple[bytes, Addr]] = []
        other = n = 0
        runs = gro and self.on_run is not None
        rxbuf, queued, fd = self._rxbuf, self._queued, s.fileno()
        for _ in range(READ_BATCH):
            try:
                if runs:
                    nbytes, anc, _flags, remote = s.recvmsg_into([rxbuf], _GRO_CMSG)
                    size = self._gro_size(anc)
                    if size and nbytes > size and rxbuf[:4] != b"\0\0\0\0":  # ESP, several datagrams
                        if esp:  # what came before leaves first
                            self._hand_off(esp, other)
                            esp, other = [], 0
                        if self._take_run(nbytes, size, (remote[0], remote[1])):
                            n += 1
                            continue
                    data = bytes(rxbuf[:nbytes])
                elif gro:
                    data, anc, _flags, remote = s.recvmsg(65535, _GRO_CMSG)
                else:
                    data, remote = s.recvfrom(65535)
                    anc = []
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("receive error on %s[%d]: %s", local[0], local[1], e)
                continue
            n += 1
            k = self._sort(data, anc, local, (remote[0], remote[1]), esp)
            other += k
            # an IKE message alone in this wake-up: FIONREAD says so without a failing read's exception
            # and its error text (as UdpTransport._readable); ESP keeps reading to the batch's end
            if n == 1 and k and not esp and not (_ioctl(fd, FIONREAD, queued) or queued[0]):
                break
        tr.stats["rx"] += n
        self.udp_reads += n
        self._hand_off(esp, other)

    def _sort(self, data: bytes, anc: list[tuple[int, int, bytes]], local: Addr, remote: Addr,
              esp: list[tuple[bytes, Addr]]) -> int:
        """The datagrams of one read: ESP onto `esp`, the rest (IKE, keepalives) to the transport now;
        returns how many went to the transport."""
        other = 0
        for d in self._datagrams(data, anc):
            if len(d) > 1 and d[:4] != b"\0\0\0\0":  # RFC 3948 2.2: ESP (non-zero SPI)
                esp.append((d, remote))
            else:
                other += 1
                self.transport.deliver_read(d, local, remote, self.clock())
        return other

    def _read_mmsg(self, s: socket.socket, local: Addr) -> None:
        """The `mmsg` step's reads: up to READ_BATCH datagrams in calls of 64 (recvmmsg)."""
        rb = self._rb = self._rb or RecvBatch(64)
        esp: list[tuple[bytes, Addr]] = []
        other = n = 0
        peers, addrs = self._peers, rb.addrs
        while n < READ_BATCH:
            try:
                got = rb.recv(s)
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("receive error on %s[%d]: %s", local[0], local[1], e)
                break
            if not got:
                break
            self.mmsg_reads += 1
            n += got
            for i in range(got):
                raw = addrs[i * 32 : i * 32 + ADDR_LEN]
                remote = peers.get(raw)
                if remote is None:
                    if len(peers) > 4096:
                        peers.clear()
                    remote = peers[raw] = rb.address(i)
                other += self._sort(rb.data(i), [], local, remote, esp)
            if got < rb.count:
                break
        self.transport.stats["rx"] += n
        self.udp_reads += n
        self._hand_off(esp, other)

    @staticmethod
    def _gro_size(anc: list[tuple[int, int, bytes]]) -> int:
        for level, kind, value in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                return int.from_bytes(value[:4], sys.byteorder)
        return 0

    def _take_run(self, nbytes: int, size: int, remote: Addr) -> bool:
        """A GRO read of several ESP datagrams (the first `nbytes` of `_rxbuf`) to `on_run`, whole;
        False when it did not take it."""
        assert self.on_run is not None
        count = (nbytes + size - 1) // size
        try:
            taken = self.on_run(self._rxbuf, size, count, nbytes - (count - 1) * size, remote)
        except Exception:  # a batch lost, never the daemon
            log.exception("internal error on %d ESP packets; dropped", count)
            taken = True
        if taken:
            self.gro_reads += 1
            self.run_reads += 1
            self.transport.stats["esp"] += count
        return taken

    def _datagrams(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> list[bytes]:
        """The datagrams of one read: several when the kernel coalesced them (a UDP_GRO control message)."""
        for level, kind, value in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                parts = split_gro(data, int.from_bytes(value[:4], sys.byteorder))
                self.gro_reads += len(parts) > 1
                return parts
        return [data]

    def _hand_off(self, esp: list[tuple[bytes, Addr]], other: int) -> None:
        """The batch's ESP packets to the data plane; the IKE answers the batch caused out."""
        self.transport.stats["esp"] += len(esp)
        if esp:
            try:
                self.on_esp(esp)
            except Exception:  # a batch lost, never the daemon
                log.exception("internal error on %d ESP packets; dropped", len(esp))
        if other:
            self.transport.flush()

    # -- send ----------------------------------------------------------------------------------

    def socket_for(self, remote: Addr) -> socket.socket | None:
        """The NAT-T socket of the address that routes to the peer (looked up at most once a second), or
        the extra socket of many-port probing the peer is reached through (core_ike/io/portpool.py)."""
        pool = getattr(self.transport, "pool", None)
        if pool is not None and (pinned := pool.socket_to(remote)) is not None:
            return pinned  # type: ignore[no-any-return]
        now = self.clock()
        hit = self._sources.get(remote[0])
        if hit is None or now - hit[0] > 1.0:
            from .transport import route_source

            try:
                s = self.transport.socket_for((route_source(remote[0]), self.natt_port))
            except OSError:
                s = None
            hit = self._sources[remote[0]] = (now, s)
        return hit[1]

    def send(self, packets: list[bytes], remote: Addr) -> None:
        """ESP packets to one peer, in order."""
        s = self.socket_for(remote)
        if s is None:
            self.send_errors += len(packets)
            return
        self.udp_sends += len(packets)
        if self.mmsg and not self.gso:
            self._batch_out(s, packets, remote)
            return
        for run in runs(packets) if self.gso else ([p] for p in packets):
            try:
                if len(run) > 1:
                    s.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(run[0])))], 0, remote)
                    self.gso_sends += 1
                else:
                    s.sendto(run[0], remote)
            except OSError as e:
                if len(run) > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.info("UDP_SEGMENT refused towards %s (%s); ESP datagrams are sent one by one",
                             remote[0], e.strerror)
                    self.gso = False
                    for p in run:
                        self._send_one(s, p, remote)
                    continue
                self.send_errors += len(run)
                log.debug("ESP send to %s: %s", remote, e)

    def send_laid_out(self, buf: memoryview, sizes: list[int], remote: Addr) -> None:
        """ESP packets to one peer that lie back to back in `buf` (`sizes`: all equal but the last,
        which may be shorter, as `EspSa.seal_into` writes them): UDP_SEGMENT sends of slices of `buf`,
        without copying them into separate objects."""
        s = self.socket_for(remote)
        n = len(sizes)
        if s is None:
            self.send_errors += n
            return
        if not self.gso:
            o = 0
            parts = []
            for size in sizes:
                parts.append(buf[o : o + size])
                o += size
            if self.mmsg:
                self._batch_out(s, parts, remote)
            else:
                for part in parts:
                    self._send_one(s, part, remote)
            self.udp_sends += n
            return
        size = sizes[0]
        per = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        o = i = 0
        while i < n:
            k = min(per, n - i)
            end = o + size * (k - 1) + sizes[i + k - 1]
            try:
                if k > 1:
                    s.sendmsg([buf[o:end]], cmsg, 0, remote)
                    self.gso_sends += 1
                else:
                    s.sendto(buf[o:end], remote)
            except OSError as e:
                if k > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.info("UDP_SEGMENT refused towards %s (%s); ESP datagrams are sent one by one",
                             remote[0], e.strerror)
                    self.gso = False
                    self.send_laid_out(buf[o:], sizes[i:], remote)
                    return
                self.send_errors += k
                log.debug("ESP send to %s: %s", remote, e)
            self.udp_sends += k
            i += k
            o = end

    def _batch_out(self, s: socket.socket, packets: Iterable[bytes | memoryview], remote: Addr) -> None:
        """The `mmsg` step's sends: into the send batch, which leaves by `flush` (one sendmmsg for the
        datagrams to every peer through one socket) or when full."""
        sb = self._sb = self._sb or SendBatch(64)
        if self._sb_sock is not s:
            self.flush()
        self._sb_sock = s
        for p in packets:
            if sb.full:
                self.flush()
                self._sb_sock = s
            sb.append(p, remote)

    def flush(self) -> None:
        """Send what `_batch_out` holds (the `mmsg` step); a no-op otherwise."""
        s, self._sb_sock = self._sb_sock, None
        sb = self._sb
        if s is None or sb is None or not len(sb):
            return
        n = len(sb)
        sent = sb.flush(s)
        self.mmsg_sends += 1
        if sent < n:
            self.send_errors += n - sent
            log.debug("ESP sendmmsg: %d of %d datagrams refused (%s)", n - sent, n, errno.errorcode.get(sb.last_error))

    def _send_one(self, s: socket.socket, p: bytes | memoryview, remote: Addr) -> None:
        try:
            s.sendto(p, remote)
        except OSError as e:
            self.send_errors += 1
            log.debug("ESP send to %s: %s", remote, e)

