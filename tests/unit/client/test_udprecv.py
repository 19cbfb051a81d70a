"""The awaitable recvfrom of NAT discovery and port mapping on both event loops the daemons run on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
import uvloop  # a dependency (pyproject.toml): the daemons' default loop (core_ike.daemon.startup.loop_factory)

from mediation_client.natdisc import UdpIO
from mediation_client.udprecv import recvfrom

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop, uvloop.new_event_loop]


@pytest.mark.parametrize("factory", LOOPS, ids=["asyncio", "uvloop"])
def test_recvfrom_waits_for_the_datagram(factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> tuple[bytes, object]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            asyncio.get_running_loop().call_soon(s.sendto, b"ping", s.getsockname())
            data, src = await asyncio.wait_for(recvfrom(s, 100), 5.0)
            return data, src[0]

    with asyncio.Runner(loop_factory=factory) as r:
        assert r.run(main()) == (b"ping", "127.0.0.1")


@pytest.mark.parametrize("factory", LOOPS, ids=["asyncio", "uvloop"])
def test_udpio_recv_gives_none_when_nothing_comes(factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> object:
        io = UdpIO(("127.0.0.1", 0))
        try:
            return await io.recv(time.monotonic() + 0.05)  # nothing comes
        finally:
            io.close()

    with asyncio.Runner(loop_factory=factory) as r:
        assert r.run(main()) is None
