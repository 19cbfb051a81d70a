"""An awaitable ``recvfrom`` on a non-blocking UDP socket that works on any event loop.

``loop.sock_recvfrom`` is asyncio's own (Python 3.11); uvloop, which the daemons run on when it is
installed (``core_ike.daemon.startup.loop_factory``), raises NotImplementedError for it. This waits for
readability with ``add_reader``, which both loops have, and reads with the socket's own ``recvfrom``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


async def recvfrom(sock: socket.socket, size: int) -> tuple[bytes, Any]:
    """One datagram and its source; OSError as ``recvfrom`` raises it (e.g. ICMP port unreachable)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recvfrom(size)
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
