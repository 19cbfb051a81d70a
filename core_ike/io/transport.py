"""asyncio UDP transport for the sans-IO engine (design principle 2; model: aioquic asyncio/protocol).

One non-blocking socket per (local address, port): the IKE port (500) and the NAT-T port (4500).
On the NAT-T port datagrams are demultiplexed in userspace (RFC 3948 2.2): a single 0xFF octet is
a NAT keepalive, a leading zero word is the non-ESP marker of an IKE message, anything else is ESP
for the data plane. The transport itself never sets UDP_ENCAP (the userspace data plane reads ESP from
these sockets); the XFRM data plane sets it on the NAT-T sockets its SAs use (core_ike/io/xfrm.py), so
the kernel decapsulates that ESP and only IKE reaches us there.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import math
import os
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..codec.message import split_natt
from ..constants import NON_ESP_MARKER
from ..errors import DecodeError, LocalError
from ..logutil import LogLimiter
from .mmsg import MAX_DATAGRAM, RecvBatch, SendBatch

log = logging.getLogger("core_ike.net")
Addr = tuple[str, int]

# Under a flood the socket queue must absorb what arrives while the engine is busy with one costly
# datagram (a DH, a signature, a GC pass): 4 MiB holds thousands of IKE_SA_INITs (docs/operations.md,
# "Floods"). The kernel doubles the value and caps SO_RCVBUF at net.core.rmem_max unless we may force it.
RECEIVE_BUFFER = 4 * 1024 * 1024
READ_BATCH = 256  # datagrams read per wakeup before other work (timers, control socket) gets its turn
MMSG_BATCH = 64  # datagrams per recvmmsg/sendmmsg call (core_ike/io/mmsg.py)
COOKIE_SLOT = 128  # a send slot holds one COOKIE answer (73 octets with the non-ESP marker)
SO_RCVBUFFORCE = 33  # Linux asm-generic/socket.h; Python's socket module lacks it
SO_ATTACH_REUSEPORT_CBPF = 51
IP_MTU_DISCOVER, IP_PMTUDISC_PROBE = 10, 3  # Linux linux/in.h: DF on, path MTU not consulted
FIONREAD = termios.FIONREAD  # on a UDP socket: the size of the next queued datagram, 0 when none (udp(7))
_ioctl = fcntl.ioctl


class _SockFprog(ctypes.Structure):  # struct sock_fprog (linux/filter.h)
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


QUEUES = 3  # sockets per worker and port: everything else, new IKE_SA_INITs with a leading notify, without

# classic BPF opcodes (linux/filter.h)
_LD_LEN, _LDB, _LDW, _LD_MEM, _ST = 0x80, 0x30, 0x20, 0x60, 0x02
_JA, _JEQ, _JGE, _JSET = 0x05, 0x15, 0x35, 0x45
_MOD, _MUL, _ADD = 0x94, 0x24, 0x04  # BPF_ALU with a constant operand
_RET_K, _RET_A = 0x06, 0x16


def steering_program(natt: bool, workers: int = 1) -> list[tuple[int, int, int, int]]:
    """Classic BPF for the port's SO_REUSEPORT group (the UDP payload at offset 0): the index of the
    socket a datagram is queued to, `QUEUES * worker + queue`.

    The queue: 1 for an IKE_SA_INIT request for a new IKE_SA (zero SPIr) whose first payload is a notify
    (a COOKIE, RFC 7296 2.6), 2 for one without, 0 for everything else (IKE_AUTH, the IKE_SAs we have, ESP
    and keepalives on the NAT-T port): a flood of new IKE_SA_INITs overflows only its own queues, never
    the one of the IKE_SAs being set up or in use (docs/operations.md, "Floods").

    The worker: every IKE_SA belongs to the worker whose index is the first octet of the SPI it chose
    for itself (`spi_tag`, as strongSwan's charon.spi_label does for clusters): our SPI is SPIr in
    messages from the original initiator (flag I set, RFC 7296 3.1), SPIi in the others. A new
    IKE_SA_INIT request is placed by its initiator's SPI (its low word modulo the number of workers),
    so its retransmissions reach the same worker; ESP on the NAT-T port by the first octet of its SPI
    (RFC 4303 2.1), which that worker tagged the same way. A single 0xFF keepalive goes to worker 0.
    """
    o = 4 if natt else 0  # RFC 3948 2.2: the non-ESP marker
    n = max(1, workers)
    code: list[tuple[int, str | int, str | int, int]] = [(_LD_LEN, 0, 0, 0)]
    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(code)

    def pick() -> None:  # A = the octet that names the worker -> A = its first socket
        code.extend([(_MOD, 0, 0, n), (_MUL, 0, 0, QUEUES), (_RET_A, 0, 0, 0)])

    if natt:
        code += [(_JGE, 0, "ret0", 8), (_LDW, 0, 0, 0), (_JEQ, "ike", 0, 0), (_LDB, 0, 0, 0)]  # ESP: its SPI
        pick()
        label("ike")
        code.append((_LD_LEN, 0, 0, 0))
    code += [(_JGE, 0, "ret0", o + 28),
             (_LDB, 0, 0, o + 18), (_JEQ, 0, "ours", 34),  # IKE_SA_INIT
             (_LDB, 0, 0, o + 19), (_JSET, "ours", 0, 0x20),  # a request
             (_LDW, 0, 0, o + 8), (_JEQ, 0, "ours", 0), (_LDW, 0, 0, o + 12), (_JEQ, 0, "ours", 0),  # SPIr zero
             (_LDW, 0, 0, o + 4), (_MOD, 0, 0, n), (_MUL, 0, 0, QUEUES), (_ST, 0, 0, 0),  # the initiator's SPI
             (_LDB, 0, 0, o + 16), (_JEQ, 0, "plain", 41),  # first payload a notify
             (_LD_MEM, 0, 0, 0), (_ADD, 0, 0, 1), (_RET_A, 0, 0, 0)]
    label("plain")
    code += [(_LD_MEM, 0, 0, 0), (_ADD, 0, 0, 2), (_RET_A, 0, 0, 0)]
    label("ours")
    code += [(_LDB, 0, 0, o + 19), (_JSET, "spir", 0, 0x08), (_LDB, 0, 0, o), (_JA, 0, 0, -1)]
    ja = len(code) - 1
    label("spir")
    code.append((_LDB, 0, 0, o + 8))
    label("pick")
    pick()
    label("ret0")
    code.append((_RET_K, 0, 0, 0))
    code[ja] = (_JA, 0, 0, labels["pick"] - ja - 1)

    def rel(i: int, target: str | int) -> int:
        return labels[target] - i - 1 if isinstance(target, str) else target

    return [(c, rel(i, jt), rel(i, jf), k) for i, (c, jt, jf, k) in enumerate(code)]


def _attach_steering(s: socket.socket, natt: bool, workers: int = 1) -> None:
    prog = steering_program(natt, workers)
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    fprog = _SockFprog(len(prog), ctypes.addressof(code))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))  # the kernel copies it now


_BIND_HINTS = {
    errno.EADDRNOTAVAIL: " (the host has no such address)",
    errno.EADDRINUSE: " (another program, such as charon or a second daemon, uses it)",
    errno.EACCES: " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


def _bound_socket(fam: int, addr: str, port: int, reuse: bool, receive_buffer: int) -> tuple[socket.socket, int]:
    """A bound non-blocking UDP socket (SO_REUSEPORT when `reuse`) and the receive buffer it got."""
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setblocking(False)
    got = receive_buffer
    if reuse and receive_buffer > 0:
        got = _set_receive_buffer(s, receive_buffer)
    try:
        s.bind((addr, port))
    except OSError as e:
        s.close()
        hint = _BIND_HINTS.get(e.errno or 0, "")
        raise LocalError(f"cannot listen on {addr}[{port}]: {e.strerror or e}{hint}") from None
    return s, got


def _answers_only(q: socket.socket) -> None:
    """A steered IKE_SA_INIT queue sends nothing but COOKIE answers (69 or 73 octets; the engine sends
    from the port's first socket): DF set, as for any datagram that cannot need fragmenting, spares
    the kernel choosing an IP ID per destination (RFC 6864 4.1: the ID of an atomic datagram is unused),
    which counts under a flood of spoofed sources."""
    if q.family == socket.AF_INET:
        with contextlib.suppress(OSError):
            q.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)


def _log_small_buffer(got: int, wanted: int) -> None:
    log.info("socket receive buffer %d octets instead of %d: net.core.rmem_max caps it "
             "(docs/operations.md, \"Floods\")", got, wanted)


def open_group(addr: str, port: int, workers: int, natt: bool,
               receive_buffer: int = RECEIVE_BUFFER) -> list[socket.socket]:
    """The SO_REUSEPORT group of one (address, port) for `workers` processes: QUEUES sockets per worker,
    bound in order (worker k owns sockets QUEUES*k .. QUEUES*k+2: the group's indices, which
    steering_program returns), with the steering program attached (`natt`: the port of RFC 3948). The caller keeps every socket open
    while the workers run: a closed one would move the last socket of the group into its place.
    As in UdpTransport, a plain bind first fails when another program holds the port."""
    try:
        fam = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    except ValueError:
        raise LocalError(f"cannot listen on {addr!r}: not an IP address") from None
    if port:
        _bound_socket(fam, addr, port, False, 0)[0].close()
    out: list[socket.socket] = []
    try:
        small = 0
        for _ in range(QUEUES * workers):
            s, got = _bound_socket(fam, addr, int(out[0].getsockname()[1]) if out else port, True, receive_buffer)
            out.append(s)
            small = small or (got < receive_buffer and got)
        try:
            _attach_steering(out[0], natt, workers)
        except OSError as e:
            raise LocalError(f"cannot steer datagrams on {addr}[{port}] to {workers} workers "
                             f"(SO_ATTACH_REUSEPORT_CBPF: {e.strerror or e})") from None
        if small:
            _log_small_buffer(small, receive_buffer)
    except LocalError:
        for s in out:
            s.close()
        raise
    return out


class SansIoEngine(Protocol):
    natt_port: int

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Addr, Addr]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...


class EspSink(Protocol):
    def receive_esp(self, data: bytes, src: tuple[str, int]) -> None: ...


def route_source(remote_ip: str) -> str:
    """The local address the kernel would use towards `remote_ip` (no packet is sent)."""
    fam = socket.AF_INET if ipaddress.ip_address(remote_ip).version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((remote_ip, 9))
        return str(s.getsockname()[0])


def local_addresses() -> list[str]:
    """Every configured IPv4/IPv6 unicast address (loopback included; link-local excluded)."""
    out: list[str] = []
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]

        with IPRoute() as ipr:
            for a in ipr.get_addr():
                ip = a.get_attr("IFA_ADDRESS")
                if ip and not ipaddress.ip_address(ip).is_link_local and ip not in out:
                    out.append(ip)
    except Exception as e:  # noqa: BLE001 - fall back to the wildcard
        log.warning("cannot list local addresses (%s); binding the wildcard address", e)
        return ["0.0.0.0"]
    return out


def _set_receive_buffer(s: socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE goes beyond net.core.rmem_max (root or CAP_NET_ADMIN); else SO_RCVBUF, capped.
    Returns the size granted."""
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice what it grants


class UdpTransport:
    """Owns the sockets and the timer of one engine; forwards events to `on_event`."""

    def __init__(
        self, engine: SansIoEngine, addresses: list[str], ports: list[int],
        on_event: Callable[[Any], None] | None = None, esp_sink: EspSink | None = None,
        clock: Callable[[], float] = time.monotonic, receive_buffer: int = RECEIVE_BUFFER,
        groups: dict[Addr, list[socket.socket]] | None = None,
    ) -> None:
        self.engine = engine
        self.addresses = addresses
        self.ports = ports
        self.on_event = on_event
        self.esp_sink = esp_sink
        self.pool: Any = None  # extra NAT-T sockets of many-port probing (core_ike/io/portpool.py SocketPool)
        self.clock = clock
        self.receive_buffer = receive_buffer
        # a worker's share of SO_REUSEPORT groups its supervisor opened (open_group): per (address, port)
        # its QUEUES sockets, already bound and steered
        self.groups = groups
        self.sockets: dict[Addr, socket.socket] = {}
        self._queues: list[socket.socket] = []  # the IKE_SA_INIT queues beside each socket (steering_program)
        self._small_buffer_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None  # a TimerHandle, or a Handle for a deadline due now
        self._timer_at: float | None = None
        self._timer_soon = False  # _timer is a call_soon handle
        self._coarse = False  # the loop's timers have a millisecond granularity (uvloop's)
        self.stats = {"rx": 0, "tx": 0, "keepalive": 0, "esp": 0, "dropped": 0}
        # one receive and one send batch for every socket (they are read one at a time); the engine's
        # pre-filter answers COOKIEs from the receive batch into the send batch (docs/operations.md, "Floods")
        self._rb = RecvBatch(MMSG_BATCH)
        self._sb = SendBatch(MMSG_BATCH, COOKIE_SLOT)
        # work the engine does ahead once the datagrams of a wake-up left (Engine.prepare), if it has any
        self._prepare: Callable[[], None] | None = getattr(engine, "prepare", None)
        prefilter = getattr(engine, "prefilter", None)
        self._answer_batch: Callable[..., Any] | None = getattr(prefilter, "answer_batch", None)
        # asked once a wake-up (`_readable`), when the pre-filter can answer a batch
        self._demanded: Callable[[], bool] | None = getattr(prefilter, "demanded", None) if self._answer_batch else None
        self._log_limit = LogLimiter(log)
        # FIONREAD's answer, written in place (a writable buffer: ioctl parses no other kind first)
        self._size = array.array("i", [0])

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind every (address, port); when one fails, none stays open and the LocalError names it."""
        self._loop = loop or asyncio.get_running_loop()
        self._coarse = type(self._loop).__module__.partition(".")[0] == "uvloop"  # millisecond timers
        if self.groups is not None:
            for key, socks in self.groups.items():
                self._adopt(key, socks)
            self.flush()
            return
        try:
            for addr in self.addresses:
                for port in self.ports:
                    self._open(addr, port)
        except LocalError:
            self.close()
            raise
        for addr, port in self.sockets:
            log.info("listening on %s[%d]", addr, port)
        self.flush()

    def _adopt(self, key: Addr, socks: list[socket.socket]) -> None:
        assert self._loop is not None
        self.sockets[key] = socks[0]
        self._queues.extend(socks[1:])
        for s in socks:
            s.setblocking(False)
            self._loop.add_reader(s.fileno(), self._readable, s, key)
        for q in socks[1:]:
            _answers_only(q)

    def _open(self, addr: str, port: int) -> None:
        try:
            fam = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
        except ValueError:
            raise LocalError(f"cannot listen on {addr!r}: not an IP address") from None
        # no SO_REUSEADDR: Linux would let a second daemon bind the same UDP address and port and
        # silently share (steal) its datagrams; it must fail instead. So a plain socket is bound first
        # (it fails when anyone holds the port), and only then the SO_REUSEPORT group of our own queues.
        if port:
            self._socket(fam, addr, port, reuse=False).close()
        s = self._socket(fam, addr, port, reuse=True)
        key = (addr, int(s.getsockname()[1]))
        self.sockets[key] = s
        assert self._loop is not None
        self._loop.add_reader(s.fileno(), self._readable, s, key)
        queues: list[socket.socket] = []
        try:
            for _ in range(2):
                queues.append(self._socket(fam, addr, key[1], reuse=True))
            _attach_steering(s, key[1] == self.engine.natt_port)
        except (LocalError, OSError) as e:
            log.info("one receive queue on %s[%d] (no SO_REUSEPORT steering: %s)", addr, key[1], e)
            for q in queues:
                q.close()
            return
        for q in queues:
            self._queues.append(q)
            self._loop.add_reader(q.fileno(), self._readable, q, key)
            _answers_only(q)

    def _socket(self, fam: int, addr: str, port: int, reuse: bool) -> socket.socket:
        s, got = _bound_socket(fam, addr, port, reuse, self.receive_buffer)
        if got < self.receive_buffer and not self._small_buffer_logged:
            self._small_buffer_logged = True
            _log_small_buffer(got, self.receive_buffer)
        return s

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for s in [*self.sockets.values(), *self._queues]:
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
            s.close()
        self.sockets.clear()
        self._queues.clear()

    def socket_for(self, local: Addr) -> socket.socket | None:
        s = self.sockets.get(local)
        if s is None:
            # wildcard bind or unknown source: any socket on that port will do
            for (a, p), sock in self.sockets.items():
                if p == local[1] and (a in ("0.0.0.0", "::") or local[0] in ("0.0.0.0", "::")):
                    return sock
        return s

    # ------------------------------------------------------------------ receive
    def _readable(self, s: socket.socket, local: Addr) -> None:
        """Read what is queued, up to READ_BATCH datagrams (the loop's callback for a ready socket): while
        COOKIEs are demanded from everyone, MMSG_BATCH per recvmmsg (`_read_batches`); else one recvfrom
        each, here, without a frame between the loop and the engine. Each datagram goes to the engine on
        its own, its replies sent as soon as the engine made them (`_answer`): a reply never waits for the
        datagrams queued behind its request. Most wake-ups of a responder find one datagram, where recvfrom
        costs less than recvmmsg through ctypes and its sockaddr decoding (or recvfrom_into a kept buffer
        and a copy out: more instructions and as many cache misses). After the first datagram, an IKE
        message, whether another one is queued is asked with FIONREAD (no exception object and no strerror
        text, as a recvfrom failing with EAGAIN makes, their code cold after every idle spell)."""
        if self._demanded is not None and self._demanded():
            self._read_batches(s, local)
            return
        deliver, answer, clock, stats = self.deliver_ike, self._answer, self.clock, self.stats
        natt = local[1] == self.engine.natt_port
        recv, fd, size = s.recvfrom, s.fileno(), self._size
        total = 0
        while total < READ_BATCH:
            try:
                data, remote = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("receive error on %s[%d]: %s", local[0], local[1], e)
                total += 1
                continue
            total += 1
            if len(remote) != 2:  # IPv6: (host, port, flowinfo, scope id), the scope in the host as `%name`
                remote = (remote[0], remote[1])
            ike = not natt or data[:4] == NON_ESP_MARKER
            if ike:  # IKE (RFC 3948 2.2: the marker stripped): to the engine
                deliver(data[4:] if natt else data, local, remote, clock())
            else:
                self._datagram(data, local, remote, clock())
            answer()
            if total == 1 and ike and not (_ioctl(fd, FIONREAD, size) or size[0]):
                # the next datagram's size: 0 when none is queued (or an empty one is: the loop's readiness,
                # level-triggered, calls again for it). Asked once a wake-up: in a run of datagrams (or after
                # ESP or a keepalive) the recvfrom that fails with EAGAIN ends it, one system call per run
                # where FIONREAD would cost one per datagram
                break
        stats["rx"] += total
        self._settle()  # each datagram's events and replies went in `_answer`: the engine has none left

    def _answer(self) -> None:
        """The events of the datagram just delivered, then its replies, sent now (one sendto each): a
        CHILD_SA is installed before the response that completes it (RFC 7296 §1.2, §1.3.1: with that
        response the CHILD_SA exists at the initiator, which may send on it at once)."""
        engine = self.engine
        out = engine.datagrams_to_send()
        if (ev := engine.next_event()) is not None:
            self._forward(ev)
            out += engine.datagrams_to_send()
        if out:
            self._send_all(out)

    def _read_batches(self, s: socket.socket, local: Addr) -> None:
        """Up to READ_BATCH datagrams, MMSG_BATCH per recvmmsg: the engine's pre-filter answers new
        IKE_SA_INIT requests of each batch from their raw octets with one sendmmsg (docs/operations.md,
        "Floods"), everything else goes to the engine one datagram at a time."""
        engine, rb, sb, answer = self.engine, self._rb, self._sb, self._answer_batch
        deliver, reply, clock, stats = self.deliver_ike, self._answer, self.clock, self.stats
        plain = local[1] != engine.natt_port
        v6 = ":" in local[0]  # an IPv6 socket's address (socket.family builds an enum on every access)
        fd = s.fileno()
        total = 0
        while total < READ_BATCH:  # drain what is queued, then let others run
            try:
                n = rb.recv(fd, READ_BATCH - total)
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("receive error on %s[%d]: %s", local[0], local[1], e)
                total += 1
                continue
            if not n:
                break
            total += n
            now = clock()
            todo = answer(rb, n, sb, not plain, v6, now) if answer is not None else range(n)
            if len(sb):
                self._flush_batch(fd, local)
            for i in todo:
                data, remote = rb.data(i), rb.address(i)
                if plain or data[:4] == NON_ESP_MARKER:  # IKE (RFC 3948 2.2: the marker stripped): to the engine
                    deliver(data if plain else data[4:], local, remote, now)
                else:
                    self._datagram(data, local, remote, now)
                reply()
            if n < rb.count:
                break  # the queue is empty
        stats["rx"] += total
        self._settle()  # each datagram's events and replies went in `_answer`: the engine has none left

    def _flush_batch(self, fd: int, local: Addr, sb: SendBatch | None = None, what: str = "COOKIE answer") -> None:
        sb = sb or self._sb
        errors = sb.errors
        self.stats["tx"] += sb.flush(fd)
        if sb.errors != errors:
            self.stats["dropped"] += sb.errors - errors
            self._log_limit.warning("send-error", self.clock(), "error sending %d %s(s) from %s[%d]: %s",
                                    sb.errors - errors, what, local[0], local[1], os.strerror(sb.last_error))

    def _datagram(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        if local[1] == self.engine.natt_port:
            ike = self.natt_ike(data, remote)
            if ike is None:
                return
            data = ike
        self.deliver_ike(data, local, remote, now)

    def natt_ike(self, data: bytes, remote: Addr) -> bytes | None:
        """The IKE message of a datagram that arrived on a NAT-T socket (RFC 3948 2.2: the non-ESP marker
        stripped); None when it was a keepalive, ESP (handed to the data plane) or malformed (counted)."""
        try:
            kind, payload = split_natt(data)
        except DecodeError as e:
            self.stats["dropped"] += 1
            log.info("dropping %d-byte datagram from %s[%d]: %s", len(data), remote[0], remote[1], e)
            return None
        if kind == "ike":
            return payload
        if kind == "keepalive":
            self.stats["keepalive"] += 1
            return None
        self.stats["esp"] += 1
        if self.esp_sink is not None:
            try:
                self.esp_sink.receive_esp(data, remote)
            except Exception:  # one packet lost, never the daemon
                log.exception("internal error on an ESP packet from %s[%d]; dropped", *remote)
        return None

    def deliver_ike(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        """An IKE message to the engine; an internal error loses this datagram, never the daemon."""
        try:
            self.engine.receive(data, local, remote, now)
        except Exception:  # last line of defence: one datagram lost, never the daemon
            self.stats["dropped"] += 1
            log.exception("internal error on a %d-byte datagram from %s[%d]; dropped", len(data), *remote)

    # ------------------------------------------------------------------ send, timers, events
    def _send_all(self, out: list[tuple[bytes, Addr, Addr]]) -> None:
        sockets = self.sockets
        for data, local, remote in out:
            s = sockets.get(local)
            if s is None:
                self.send(data, local, remote)
                continue
            try:
                s.sendto(data, remote)
                self.stats["tx"] += 1
            except OSError as e:
                log.warning("error sending to %s[%d]: %s", remote[0], remote[1], e)

    def send(self, data: bytes, local: Addr, remote: Addr) -> None:
        s = self.socket_for(local)
        if s is None:
            self.stats["dropped"] += 1
            log.warning("no socket for %s[%d], dropping %d bytes to %s[%d]", local[0], local[1], len(data),
                        remote[0], remote[1])
            return
        try:
            s.sendto(data, remote)
            self.stats["tx"] += 1
        except OSError as e:
            log.warning("error sending to %s[%d]: %s", remote[0], remote[1], e)

    def deliver_read(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        """A datagram another reader took from a NAT-T socket (the userspace data plane's, core_ike/io/fastpath.py)
        to the engine, in `_readable`'s order: what the engine had to send before it leaves first, then its
        events are handled and its replies leave (`_answer`)."""
        if early := self.engine.datagrams_to_send():
            self._send_all(early)
        if data[:4] == NON_ESP_MARKER:  # IKE (RFC 3948 2.2: the marker stripped), as `_readable` tells it
            self.deliver_ike(data[4:], local, remote, now)
        else:  # a keepalive, or too short for either (counted, logged)
            self._datagram(data, local, remote, now)
        self._answer()

    def _forward(self, ev: Any) -> None:
        """`ev` and every event queued after it to `on_event`."""
        engine = self.engine
        while ev is not None:
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:  # an event handler must not kill the daemon
                    log.exception("event handler failed for %r", ev)
            ev = engine.next_event()

    def flush(self) -> None:
        """Forward the engine's events, then send what it produced (a CHILD_SA is installed before the
        message that completes it leaves, `_answer`), then `_settle`."""
        engine = self.engine
        out = engine.datagrams_to_send()
        if (ev := engine.next_event()) is not None:
            self._forward(ev)
            out += engine.datagrams_to_send()  # handlers may have produced more work (e.g. initiating)
        if out:
            self._send_all(out)
        self._settle()

    def _settle(self) -> None:
        """The end of a wake-up whose events and replies have been handled (`flush`, or each datagram's
        `_answer` in a read): the engine's work ahead (Engine.prepare), then the one timer re-armed."""
        if self._prepare is not None:
            try:
                self._prepare()
            except Exception:  # work done ahead: the engine does it again when it needs it
                log.exception("internal error preparing the engine's next work")
        t = self.engine.get_timer()
        if self._timer is not None and self._timer_at is not None and (t is None or self._timer_at <= t) \
                and (self._timer_soon or not self._coarse or self._timer_at > self.clock()):
            # armed for this deadline or an earlier one: firing early costs one idle handle_timer (which
            # re-arms), replacing the handle after every datagram costs more under load; but a millisecond
            # timer whose deadline has come is replaced by the next turn of the loop (below)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None and self._loop is not None:
            delay = max(0.0, t - self.clock())
            self._timer_soon = delay == 0.0
            if self._timer_soon:
                # due already (e.g. a check list that decides after the datagrams read with its deadline's
                # answer): the next turn of the loop, on any loop, not a millisecond timer later
                self._timer = self._loop.call_soon(self._fire)
                return
            if self._coarse:
                # libuv counts whole milliseconds from a floored start (and uvloop rounds the delay): one
                # more millisecond, rounded up, never fires before the deadline, where firing early would
                # cost an idle handle_timer and a re-arm per millisecond left
                delay = math.ceil(delay * 1000 + 1) / 1000
            self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.engine.handle_timer(self.clock())
        except Exception:  # keep the timer running for every other SA
            log.exception("internal error in a timer")
        self.flush()
