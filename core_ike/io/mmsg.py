"""Batched UDP receive and send: recvmmsg(2) and sendmmsg(2) through ctypes (libc), no C to build.

A datagram costs one system call with recvfrom/sendto; under a flood (docs/operations.md, "Floods") the
calls dominate. `RecvBatch` reads up to `count` datagrams with one recvmmsg, `SendBatch` sends what was
appended with one sendmmsg. Everything the kernel reads or writes is allocated once: the payload slots
(an anonymous mmap, so untouched pages cost no memory), the socket addresses, the iovec and mmsghdr
arrays; after a call the lengths are read with one precompiled `struct` unpack, and a datagram is a
slice of the buffer. No ctypes object is made per datagram.

    rb, sb = RecvBatch(), SendBatch()
    n = rb.recv(sock)                      # 0 when nothing is queued (MSG_DONTWAIT)
    for data, (ip, port) in rb:            # data: bytes (a copy; rb.view(i) for a view)
        sb.append(answer(data), (ip, port))
    sb.flush(sock)                         # one sendmmsg

Without recvmmsg/sendmmsg in libc (`AVAILABLE` False, or `use_mmsg=False`) the same objects loop over
recvfrom_into/sendto instead, with the same results. IPv4 and IPv6 (sockaddr_in, sockaddr_in6) both.
The raw socket address of datagram i is `rb.addrs[rb.addr_offset(i) : ... + ADDR_LEN]` (its address
octets at +4 for IPv4, +8 for IPv6), for callers that answer without converting it to a string.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from collections.abc import Callable, Iterator

Addr = tuple[str, int]

MSG_DONTWAIT = 0x40  # Linux bits/socket.h
ADDR_LEN = 28  # sizeof(struct sockaddr_in6), the larger of the two
ADDR_STRIDE = 32
SOCKADDR_IN_LEN = 16
MAX_DATAGRAM = 65535


class _IoVec(ctypes.Structure):  # struct iovec
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):  # struct msghdr (sys/socket.h)
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):  # struct mmsghdr
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


HDR_SIZE = ctypes.sizeof(_MMsgHdr)
IOV_SIZE = ctypes.sizeof(_IoVec)
_LEN_AT = _MMsgHdr.msg_len.offset
_NAMELEN_AT = _MsgHdr.msg_namelen.offset
_IOV_LEN_AT = _IoVec.iov_len.offset
_U32 = struct.Struct("=I")
_SIZE_T = struct.Struct("N")  # size_t, native
_FAMILY = struct.Struct("=H")
_PORT = struct.Struct("!H")
_IN4_REST = struct.Struct("!H4s8x")  # sockaddr_in after the family (host order): port, address, zero
_IN6_REST = struct.Struct("!HI16s")  # port, flowinfo, address; then the scope id (host order)
_AF_INET, _AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)


def _load() -> tuple[Callable[..., int] | None, Callable[..., int] | None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None, None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


_recvmmsg, _sendmmsg = _load()
AVAILABLE = _recvmmsg is not None and _sendmmsg is not None


def encode_sockaddr(addr: Addr, out: mmap.mmap | bytearray, off: int) -> int:
    """Write `addr` as a sockaddr_in or sockaddr_in6 at `off`; its length. A scope (`fe80::1%eth0`)
    becomes the sin6_scope_id."""
    ip, port = addr[0], addr[1]
    if ":" in ip:
        scope = 0
        if "%" in ip:
            ip, name = ip.split("%", 1)
            scope = int(name) if name.isdigit() else socket.if_nametoindex(name)
        _FAMILY.pack_into(out, off, _AF_INET6)
        _IN6_REST.pack_into(out, off + 2, port, 0, socket.inet_pton(socket.AF_INET6, ip))
        _U32.pack_into(out, off + 24, scope)
        return ADDR_LEN
    _FAMILY.pack_into(out, off, _AF_INET)
    _IN4_REST.pack_into(out, off + 2, port, socket.inet_pton(socket.AF_INET, ip))
    return SOCKADDR_IN_LEN


def decode_sockaddr(buf: mmap.mmap | bytes | bytearray, off: int) -> Addr:
    """(ip, port) of the sockaddr_in or sockaddr_in6 at `off` (an IPv6 scope as `%name`, as the socket
    module writes it)."""
    port = _PORT.unpack_from(buf, off + 2)[0]
    if _FAMILY.unpack_from(buf, off)[0] == _AF_INET6:
        ip = socket.inet_ntop(socket.AF_INET6, buf[off + 8: off + 24])
        scope = _U32.unpack_from(buf, off + 24)[0]
        if scope:
            try:
                ip = f"{ip}%{socket.if_indextoname(scope)}"
            except OSError:
                ip = f"{ip}%{scope}"
        return ip, port
    return socket.inet_ntop(socket.AF_INET, buf[off + 4: off + 8]), port


def _fd(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


class _Arrays:
    """`count` slots of `size` octets, their socket addresses, iovecs and mmsghdrs, made once."""

    def __init__(self, count: int, size: int) -> None:
        if count < 1 or size < 1:
            raise ValueError("a batch needs at least one slot of at least one octet")
        self.count, self.size = count, size
        self.buf = mmap.mmap(-1, count * size)  # anonymous: pages are zero until written
        self.addrs = mmap.mmap(-1, count * ADDR_STRIDE)
        self.iov = bytearray(count * IOV_SIZE)
        self.hdrs = bytearray(count * HDR_SIZE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        abase = ctypes.addressof(ctypes.c_char.from_buffer(self.addrs))
        iovs = (_IoVec * count).from_buffer(self.iov)
        hdrs = (_MMsgHdr * count).from_buffer(self.hdrs)
        ibase = ctypes.addressof(iovs)
        for i in range(count):
            iovs[i].iov_base, iovs[i].iov_len = base + i * size, size
            h = hdrs[i].msg_hdr
            h.msg_name, h.msg_namelen = abase + i * ADDR_STRIDE, ADDR_LEN
            h.msg_iov, h.msg_iovlen = ibase + i * IOV_SIZE, 1
        self.hdr_ptr = ctypes.addressof(hdrs)
        self._keep = (iovs, hdrs)  # the ctypes views pin the buffers' exports
        self.template = bytes(self.hdrs)  # each receive starts from it: the kernel rewrites msg_namelen


class RecvBatch:
    """Up to `count` datagrams (of at most `size` octets: larger ones are cut, so the default admits
    any UDP datagram) per `recv`. After `recv` returned n: `lengths[i]`, `data(i)`, `view(i)`,
    `address(i)`, `offset(i)`, `addr_offset(i)` for i < n, and iteration yields (data, (ip, port))."""

    def __init__(self, count: int = 64, size: int = MAX_DATAGRAM, *, use_mmsg: bool | None = None) -> None:
        self._a = _Arrays(count, size)
        self.count, self.size = count, size
        self.buf, self.addrs = self._a.buf, self._a.addrs
        self.mmsg = AVAILABLE if use_mmsg is None else (use_mmsg and AVAILABLE)
        self.n = 0
        self.lengths: tuple[int, ...] = ()
        self._view = memoryview(self.buf)
        self._names: dict[bytes, Addr] = {}
        self._lens = [struct.Struct("=" + f"{_LEN_AT}xI{HDR_SIZE - _LEN_AT - 4}x" * k) for k in range(count + 1)]

    def recv(self, sock: socket.socket | int, max_count: int | None = None) -> int:
        """Read what is queued, up to `max_count` (default `count`) datagrams, without blocking: how many
        (0 when none). Other errors raise OSError, as recvfrom would."""
        k = self.count if max_count is None else max(1, min(max_count, self.count))
        a = self._a
        if self.mmsg:
            assert _recvmmsg is not None
            a.hdrs[: self.n * HDR_SIZE] = a.template[: self.n * HDR_SIZE]
            n = _recvmmsg(_fd(sock), a.hdr_ptr, k, MSG_DONTWAIT, None)
            if n < 0:
                e = ctypes.get_errno()
                self.n, self.lengths = 0, ()
                if e in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return 0
                raise OSError(e, f"recvmmsg: {errno.errorcode.get(e, e)}")
            self.n, self.lengths = n, self._lens[n].unpack_from(a.hdrs)
            return n
        return self._recv_each(sock, k)

    def _recv_each(self, sock: socket.socket | int, k: int) -> int:
        s = sock if not isinstance(sock, int) else socket.socket(fileno=sock)
        lens: list[int] = []
        view, size = self._view, self.size
        try:
            for i in range(k):
                try:
                    got, addr = s.recvfrom_into(view[i * size: (i + 1) * size], size, MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if lens:
                        break  # as recvmmsg: what was read is returned, the error comes with the next call
                    raise
                encode_sockaddr((addr[0], addr[1]), self.addrs, i * ADDR_STRIDE)
                lens.append(got)
        finally:
            self.n, self.lengths = len(lens), tuple(lens)
            if isinstance(sock, int):
                s.detach()
        return self.n

    def offset(self, i: int) -> int:
        return i * self.size

    def addr_offset(self, i: int) -> int:
        return i * ADDR_STRIDE

    def data(self, i: int) -> bytes:
        off = i * self.size
        return self.buf[off: off + self.lengths[i]]

    def view(self, i: int) -> memoryview:
        off = i * self.size
        return self._view[off: off + self.lengths[i]]

    def address(self, i: int) -> Addr:
        off = i * ADDR_STRIDE
        addrs = self.addrs
        # the octets that make the address (family, port, IPv4 address; all of a sockaddr_in6) as the key
        raw = addrs[off: off + (8 if _FAMILY.unpack_from(addrs, off)[0] == _AF_INET else ADDR_LEN)]
        addr = self._names.get(raw)
        if addr is None:  # decoded once per source (a few peers, or the ones of one batch)
            if len(self._names) >= 4096:
                self._names.clear()
            addr = self._names[raw] = decode_sockaddr(raw, 0)
        return addr

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[bytes, Addr]]:
        for i in range(self.n):
            yield self.data(i), self.address(i)


class SendBatch:
    """Datagrams to send with one `flush` (sendmmsg): `append(data, (ip, port))` copies them into the
    slots; `reserve(length)` hands out a slot to write in place (its payload and address offsets in
    `buf` and `addrs`; set_addr_len when the address written is not a sockaddr_in6's length). Up to
    `count` datagrams of at most `size` octets; `full` says when to flush."""

    def __init__(self, count: int = 64, size: int = MAX_DATAGRAM, *, use_mmsg: bool | None = None) -> None:
        self._a = _Arrays(count, size)
        self.count, self.size = count, size
        self.buf, self.addrs = self._a.buf, self._a.addrs
        self.mmsg = AVAILABLE if use_mmsg is None else (use_mmsg and AVAILABLE)
        self.n = 0
        self.errors = 0  # datagrams the kernel refused (their errno in last_error)
        self.last_error = 0
        self._iov_templates: dict[int, bytes] = {}
        self._sockaddrs: dict[Addr, bytes] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def full(self) -> bool:
        return self.n >= self.count

    def reserve(self, length: int) -> tuple[int, int]:
        """The next slot for a datagram of `length` octets: (payload offset, address offset)."""
        i = self.n
        if i >= self.count or length > self.size:
            raise ValueError("send batch full" if i >= self.count else f"{length} octets exceed the slot's {self.size}")
        self.n = i + 1
        _SIZE_T.pack_into(self._a.iov, i * IOV_SIZE + _IOV_LEN_AT, length)
        return i * self.size, i * ADDR_STRIDE

    def open_slots(self, length: int) -> tuple[int, int]:
        """For writing many datagrams of one `length` in place: (index of the first free slot, how many are
        free). Slot i's payload is at `i * size` in `buf`, its address (a whole sockaddr_in6's length:
        ADDR_LEN octets, a sockaddr_in followed by anything) at `i * ADDR_STRIDE` in `addrs`; `commit(k)`
        then marks the first k of them used. Two copies per call, none per datagram."""
        if length > self.size:
            raise ValueError(f"{length} octets exceed the slot's {self.size}")
        a, i = self._a, self.n
        tmpl = self._iov_templates.get(length)
        if tmpl is None:
            iov = bytearray(a.iov)
            for k in range(self.count):
                _SIZE_T.pack_into(iov, k * IOV_SIZE + _IOV_LEN_AT, length)
            tmpl = self._iov_templates[length] = bytes(iov)
        a.iov[i * IOV_SIZE:] = tmpl[i * IOV_SIZE:]
        a.hdrs[i * HDR_SIZE:] = a.template[i * HDR_SIZE:]  # msg_namelen: ADDR_LEN
        return i, self.count - i

    def commit(self, k: int) -> None:
        """Mark `k` slots handed out by open_slots as holding datagrams to send."""
        if not 0 <= k <= self.count - self.n:
            raise ValueError(f"cannot commit {k} slots, {self.count - self.n} are free")
        self.n += k

    def set_addr_len(self, length: int) -> None:
        """The socket address length of the slot reserve() handed out last (16: sockaddr_in)."""
        _U32.pack_into(self._a.hdrs, (self.n - 1) * HDR_SIZE + _NAMELEN_AT, length)

    def append(self, data: bytes | bytearray | memoryview, addr: Addr) -> None:
        i, n = self.n, len(data)
        if i >= self.count or n > self.size:
            raise ValueError("send batch full" if i >= self.count else f"{n} octets exceed the slot's {self.size}")
        self.n = i + 1
        a = self._a
        _SIZE_T.pack_into(a.iov, i * IOV_SIZE + _IOV_LEN_AT, n)
        off = i * self.size
        self.buf[off: off + n] = data
        raw = self._sockaddrs.get(addr)
        if raw is None:  # encoded once per destination (a few peers, or the ones of one batch)
            if len(self._sockaddrs) >= 4096:
                self._sockaddrs.clear()
            tmp = bytearray(ADDR_LEN)
            raw = self._sockaddrs[addr] = bytes(tmp[: encode_sockaddr(addr, tmp, 0)])
        self.addrs[i * ADDR_STRIDE: i * ADDR_STRIDE + len(raw)] = raw
        _U32.pack_into(a.hdrs, i * HDR_SIZE + _NAMELEN_AT, len(raw))

    def flush(self, sock: socket.socket | int) -> int:
        """Send everything appended; how many the kernel took. A datagram it refuses (its errno in
        `last_error`, counted in `errors`) is skipped and the rest still sent; EAGAIN drops the rest (a
        full socket buffer: UDP, the network would have lost them too)."""
        n, self.n = self.n, 0
        if not n:
            return 0
        if not self.mmsg:
            return self._send_each(sock, n)
        assert _sendmmsg is not None
        fd, ptr, sent, i = _fd(sock), self._a.hdr_ptr, 0, 0
        while i < n:
            r = _sendmmsg(fd, ptr + i * HDR_SIZE, n - i, 0)
            if r < 0:
                e = ctypes.get_errno()
                if e == errno.EINTR:
                    continue
                self.last_error = e
                if e in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.errors += n - i
                    break
                self.errors += 1
                i += 1  # this one failed (e.g. no route): the others may still go
                continue
            sent += r
            i += r
        return sent

    def _send_each(self, sock: socket.socket | int, n: int) -> int:
        s = sock if not isinstance(sock, int) else socket.socket(fileno=sock)
        sent = 0
        try:
            for i in range(n):
                length = _SIZE_T.unpack_from(self._a.iov, i * IOV_SIZE + _IOV_LEN_AT)[0]
                try:
                    s.sendto(self.buf[i * self.size: i * self.size + length], decode_sockaddr(self.addrs,
                                                                                         i * ADDR_STRIDE))
                    sent += 1
                except OSError as e:
                    self.errors += 1
                    self.last_error = e.errno or 0
        finally:
            if isinstance(sock, int):
                s.detach()
        return sent
