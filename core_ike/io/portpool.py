"""Extra UDP sockets for many-port probing (core_ike/me/birthday.py): the adapter side of `PortPool`.

Each socket is bound to the given address at a port the kernel picks, registered with the transport
(its `sockets` map, so the engine's datagrams from that local endpoint leave through it) and read here
as a NAT-T socket: RFC 3948 §2.2 demultiplexing (a 0xFF keepalive, the non-ESP marker before IKE and
connectivity checks, ESP otherwise). The engine learns the port as one of its NAT-T ports
(`Engine.natt_extra`): IKE on it carries the marker and never floats to 4500.

ESP-in-UDP of an IKE_SA bound to such a socket must leave through it too, or the peer's NAT, which
filters by address and port (RFC 4787 §5), would drop it: `socket_to(remote)` answers the socket that
last received from `remote` ("symmetric" return, as RFC 3948 §2.1's NAT-T sockets do for IKE), and the
data plane's ESP senders ask it before the NAT-T socket (core_ike/daemon/runtime.py, core_ike/io/fastpath.py).

At most `limit` sockets are open at once (a bound on the file descriptors a probe may take).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("core_ike.net")
Addr = tuple[str, int]

LIMIT = 1024  # sockets open at once, every probe together
READ_BATCH = 64


class SocketPool:
    """Extra NAT-T sockets of one transport (`UdpTransport`) and its engine."""

    def __init__(self, transport: Any, limit: int = LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.limit = limit
        self.clock = clock
        self._socks: dict[Addr, socket.socket] = {}
        self._pins: dict[Addr, Addr] = {}  # remote -> our extra socket that last heard from it
        transport.pool = self

    def __len__(self) -> int:
        return len(self._socks)

    def open(self, ip: str, count: int) -> list[Addr]:
        """Up to `count` sockets on `ip` (fewer when the limit or the system refuses more)."""
        try:
            fam = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        except ValueError:
            log.warning("port pool: %r is not an IP address", ip)
            return []
        loop = self.transport._loop or asyncio.get_event_loop()
        engine = self.transport.engine
        out: list[Addr] = []
        for _ in range(max(0, min(count, self.limit - len(self._socks)))):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setblocking(False)
                s.bind((ip, 0))
            except OSError as e:
                s.close()
                log.warning("port pool: cannot open more sockets on %s (%d open): %s", ip, len(self._socks),
                            e.strerror or e)
                break
            key = (ip, int(s.getsockname()[1]))
            self._socks[key] = s
            self.transport.sockets[key] = s
            engine.natt_extra.add(key[1])
            loop.add_reader(s.fileno(), self._readable, s, key)
            out.append(key)
        if out:
            log.info("port pool: %d extra sockets on %s (%d open)", len(out), ip, len(self._socks))
        return out

    def close(self, addrs: Iterable[Addr]) -> None:
        loop = self.transport._loop
        n = 0
        for key in addrs:
            s = self._socks.pop(key, None)
            if s is None:
                continue
            n += 1
            if self.transport.sockets.get(key) is s:
                del self.transport.sockets[key]
            self.transport.engine.natt_extra.discard(key[1])
            if loop is not None and s.fileno() >= 0:
                loop.remove_reader(s.fileno())
            s.close()
        if n:
            self._pins = {r: k for r, k in self._pins.items() if k in self._socks}
            log.info("port pool: %d sockets closed (%d open)", n, len(self._socks))

    def close_all(self) -> None:
        self.close(list(self._socks))

    def socket_to(self, remote: Addr) -> socket.socket | None:
        """The extra socket ESP to `remote` leaves from, when one last heard from it."""
        key = self._pins.get(remote)
        return self._socks.get(key) if key is not None else None

    def local_to(self, remote: Addr) -> Addr | None:
        key = self._pins.get(remote)
        return key if key is not None and key in self._socks else None

    # ------------------------------------------------------------------ receive (RFC 3948 §2.2)
    def _readable(self, s: socket.socket, local: Addr) -> None:
        tr = self.transport
        for _ in range(READ_BATCH):
            try:
                data, remote = s.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("receive error on %s[%d]: %s", local[0], local[1], e)
                continue
            remote = (remote[0], remote[1])
            tr.stats["rx"] += 1
            self._datagram(data, local, remote)
        tr.flush()

    def _datagram(self, data: bytes, local: Addr, remote: Addr) -> None:
        tr = self.transport
        # pinned whatever the datagram: whoever could forge a bad one from `remote` could forge a keepalive
        self._pins[remote] = local
        ike = tr.natt_ike(data, remote)
        if ike is not None:
            tr.deliver_ike(ike, local, remote, self.clock())
