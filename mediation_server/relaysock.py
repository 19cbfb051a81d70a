"""The thin asyncio side of the data relay (datarelay.py is the sans-IO table): one UDP socket per
allocated relay port, opened and closed as the table reports, datagrams fed in with `now`."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

from core_ike.me import events as mev

from .datarelay import DataRelay

log = logging.getLogger("mediation_server.relay")


class RelaySockets:
    def __init__(self, table: DataRelay, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.clock = clock
        self.sockets: dict[int, socket.socket] = {}  # by relay port
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_event(self, e: object) -> None:
        """Engine event listener (every event of the server): ports change when a relay is allocated or freed."""
        match e:  # no union type made per event
            case mev.RelayAllocated():  # after the relayed ME_CONNECT that offers it has left
                self.apply()
                log.info("relay %d allocated for '%s' <-> '%s': %s[%d] <-> %s[%d]", e.relay_id, e.a, e.b,
                         e.address, e.a_port, e.address, e.b_port)
            case mev.RelayFreed():
                self.apply()

    def apply(self) -> None:
        ch = self.table.take_changes()
        for _, port in ch.closed:
            self._close(port)
        for address, port in ch.opened:
            try:
                self._open(address, port)
            except OSError as err:
                log.warning("relay port %s[%d] unusable: %s", address, port, err)
                for r in self.table:
                    if port in (r.a.port, r.b.port):
                        self.table.release(r.id, f"port {port} unusable")
                for _, p in self.table.take_changes().closed:
                    self._close(p)

    def _open(self, address: str, port: int) -> None:
        if port in self.sockets:
            return
        fam = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.bind((address, port))
        except OSError:
            s.close()
            raise
        self.sockets[port] = s
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(s.fileno(), self._readable, port, s)

    def _close(self, port: int) -> None:
        s = self.sockets.pop(port, None)
        if s is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(s.fileno())
        s.close()

    def _readable(self, port: int, s: socket.socket) -> None:
        for _ in range(64):  # drain a burst, then yield to the loop
            try:
                data, src = s.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ICMP errors surface here on Linux
                log.debug("relay port %d: %s", port, err)
                return
            for out, out_port, dst in self.table.receive(data, port, (src[0], src[1]), self.clock()):
                sock = self.sockets.get(out_port)
                if sock is None:
                    continue
                try:
                    sock.sendto(out, dst)
                except OSError as err:
                    log.debug("relay port %d -> %s[%d]: %s", out_port, dst[0], dst[1], err)

    def close(self) -> None:
        for port in list(self.sockets):
            self._close(port)
