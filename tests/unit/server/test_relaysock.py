"""The asyncio side of the data relay (relaysock.py) on loopback: one UDP socket per relay port, opened and
closed as relays come and go, datagrams forwarded end to end through real sockets."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from core_ike.me import events as mev
from mediation_server.datarelay import DataRelay, Relay, RelayConfig
from mediation_server.relaysock import RelaySockets

LO = "127.0.0.1"
N_PORTS = 6


def _free_range(n: int = N_PORTS) -> tuple[int, int]:
    """n consecutive loopback UDP ports that are free right now, below the ephemeral ports (Linux's
    ip_local_port_range starts at 32768): a socket bound to port 0 meanwhile, a Peer of the test or
    any other process's, cannot take one of them before the relay binds it."""
    for _ in range(50):
        lo = random.randrange(20000, 32768 - n)
        held: list[socket.socket] = []
        try:
            for p in range(lo, lo + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((LO, p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return lo, lo + n - 1
    raise RuntimeError("no free port range on loopback")


def _bound(port: int) -> bool:
    """Whether something holds (LO, port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((LO, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


class Peer:
    """A peer's UDP socket on loopback, read by the loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        data, src = self.sock.recvfrom(65535)
        self.got.put_nowait((data, (src[0], src[1])))

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (LO, port))

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.got.get(), timeout)

    async def nothing(self, wait: float = 0.1) -> bool:
        await asyncio.sleep(wait)
        return self.got.empty()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def _allocated(r: Relay) -> mev.RelayAllocated:
    return mev.RelayAllocated(r.id, r.a.identity, r.b.identity, r.connect_id.hex(), r.address, r.a.port, r.b.port)


def _freed(r: Relay, why: str) -> mev.RelayFreed:
    return mev.RelayFreed(r.id, r.a.identity, r.b.identity, why, r.a.bytes_in, r.b.bytes_in)


def _run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_forward_end_to_end_and_ports_follow_the_relays() -> None:
    ports = _free_range()

    async def body() -> None:
        now = [100.0]
        table = DataRelay(RelayConfig(ports=ports))
        socks = RelaySockets(table, clock=lambda: now[0])
        alice, bob = Peer(), Peer()
        try:
            r = table.allocate(b"cid-1", LO, ("alice", LO), ("bob", LO), now[0])
            socks.on_event(object())  # not a relay event: nothing happens yet
            assert socks.sockets == {}
            socks.on_event(_allocated(r))
            assert sorted(socks.sockets) == [r.a.port, r.b.port] == [ports[0], ports[0] + 1]
            assert _bound(r.a.port) and _bound(r.b.port) and not _bound(ports[0] + 2)

            alice.send(b"check from alice", r.a.port)  # alice latches; bob unknown: dropped
            assert await alice.nothing() and await bob.nothing()
            assert table.status(now[0])[0].a_latched == alice.addr
            bob.send(b"hello alice", r.b.port)  # bob latches; forwarded out of alice's port
            assert await alice.recv() == (b"hello alice", (LO, r.a.port))
            now[0] = 101.0
            big = bytes(range(256)) * 40  # 10 KiB ESP-in-UDP-sized datagram, forwarded unchanged
            alice.send(big, r.a.port)
            assert await bob.recv() == (big, (LO, r.b.port))
            (st,) = table.status(now[0])
            assert st.b_latched == bob.addr and st.bytes_a_to_b == len(big) and st.bytes_b_to_a == 11
            assert st.idle == 0.0 and st.in_use  # the socket layer feeds its clock into the table

            # a second relay: two more ports, independent of the first
            r2 = table.allocate(b"cid-2", LO, ("carol", LO), ("dave", LO), now[0])
            socks.on_event(_allocated(r2))
            assert sorted(socks.sockets) == sorted([r.a.port, r.b.port, r2.a.port, r2.b.port])

            # the first relay freed: its sockets are closed, its ports free again, nothing forwarded
            table.release(r.id, "test")
            socks.on_event(_freed(r, "test"))
            assert sorted(socks.sockets) == [r2.a.port, r2.b.port]
            assert not _bound(r.a.port) and not _bound(r.b.port) and _bound(r2.a.port)
            bob.send(b"too late", r.b.port)
            assert await alice.nothing()

            # expiry through the table's timer closes the rest
            now[0] = 200.0
            assert [x.id for x in table.handle_timer(now[0])] == [r2.id]
            socks.apply()
            assert socks.sockets == {} and not _bound(r2.a.port)
        finally:
            socks.close()
            alice.close()
            bob.close()

    _run(body)


def test_unusable_port_frees_the_relay(caplog: pytest.LogCaptureFixture) -> None:
    ports = _free_range()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((LO, ports[0] + 1))  # someone else holds one port of the range

    async def body() -> None:
        table = DataRelay(RelayConfig(ports=ports))
        socks = RelaySockets(table, clock=lambda: 0.0)
        try:
            r = table.allocate(b"cid", LO, ("alice", LO), ("bob", LO), 0.0)
            socks.on_event(_allocated(r))
            assert len(table) == 0 and socks.sockets == {}  # relay released, the other port closed again
            assert not _bound(r.a.port)
            assert "unusable" in caplog.text
            r2 = table.allocate(b"cid2", LO, ("alice", LO), ("bob", LO), 0.0)  # next ports work
            socks.apply()
            assert sorted(socks.sockets) == [r2.a.port, r2.b.port] and ports[0] + 1 not in socks.sockets
        finally:
            socks.close()
            assert socks.sockets == {}

    try:
        _run(body)
    finally:
        squatter.close()
