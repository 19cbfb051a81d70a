"""The extra sockets of many-port probing (core_ike/io/portpool.py) on loopback: bound, registered with
the transport and the engine as NAT-T ports, read with RFC 3948 §2.2 demultiplexing (IKE without its
marker to the engine, ESP to the data plane, keepalives counted), ESP's way back pinned to the socket
that heard the peer, a bound on how many are open, and everything closed again."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from core_ike.io.portpool import SocketPool
from core_ike.io.transport import UdpTransport
from tests.unit.daemon.flushwait import after_batches


class FakeEngine:
    def __init__(self) -> None:
        self.natt_extra: set[int] = set()
        self.got: list[tuple[bytes, Any, Any]] = []

    def receive(self, data: bytes, local: Any, remote: Any, now: float) -> None:
        self.got.append((data, local, remote))


class FakeTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = FakeEngine()
        self.sockets: dict[Any, socket.socket] = {}
        self._loop = loop
        self.stats = {"rx": 0, "keepalive": 0, "esp": 0, "dropped": 0}
        self.esp: list[tuple[bytes, Any]] = []
        self.esp_sink = self
        self.flushes = 0
        self.pool: Any = None

    def receive_esp(self, data: bytes, src: Any) -> None:
        self.esp.append((data, src))

    def flush(self) -> None:
        self.flushes += 1

    # the real transport's demultiplexing (RFC 3948 2.2), over this stand-in's engine, stats and sink
    natt_ike = UdpTransport.natt_ike
    deliver_ike = UdpTransport.deliver_ike


def test_extra_sockets_read_as_natt_sockets_and_close() -> None:
    async def main() -> None:
        tr = FakeTransport(asyncio.get_running_loop())
        pool = SocketPool(tr, limit=8)
        assert tr.pool is pool
        addrs = pool.open("127.0.0.1", 3)
        assert len(addrs) == 3 and len({p for _, p in addrs}) == 3 and len(pool) == 3
        assert all(tr.sockets[a].getsockname() == a for a in addrs)  # the engine's sends find them
        assert tr.engine.natt_extra == {p for _, p in addrs}

        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        me = peer.getsockname()
        try:
            ike = bytes(28)
            peer.sendto(b"\0\0\0\0" + ike, addrs[1])  # RFC 3948 §2.2: marker + IKE
            peer.sendto(b"\x12\x34\x56\x78" + bytes(20), addrs[2])  # ESP (non-zero SPI)
            peer.sendto(b"\xff", addrs[0])  # NAT keepalive
            peer.sendto(b"\x01", addrs[0])  # neither
            await after_batches(tr, lambda: tr.engine.got and tr.esp and tr.stats["keepalive"] and tr.stats["dropped"],
                                "every kind of datagram handled")
            assert tr.engine.got == [(ike, addrs[1], me)]
            assert tr.esp == [(b"\x12\x34\x56\x78" + bytes(20), me)]
            assert tr.stats["rx"] == 4 and tr.flushes >= 1
            # ESP back to the peer leaves from the socket that heard it last
            assert pool.local_to(me) == addrs[0] and pool.socket_to(me) is tr.sockets[addrs[0]]
            assert pool.local_to(("127.0.0.1", 9)) is None

            pool.close([addrs[0], addrs[2]])
            assert set(tr.sockets) == {addrs[1]} and tr.engine.natt_extra == {addrs[1][1]} and len(pool) == 1
            assert pool.local_to(me) is None  # the pin went with its socket
            pool.close_all()
            assert tr.sockets == {} and tr.engine.natt_extra == set()
        finally:
            peer.close()

    asyncio.run(main())


def test_the_pool_opens_no_more_than_its_limit() -> None:
    async def main() -> None:
        tr = FakeTransport(asyncio.get_running_loop())
        pool = SocketPool(tr, limit=5)
        assert len(pool.open("127.0.0.1", 3)) == 3
        assert len(pool.open("127.0.0.1", 3)) == 2  # 5 at once, every probe together
        assert pool.open("127.0.0.1", 1) == []
        assert pool.open("not an address", 1) == []
        pool.close_all()
        assert len(pool.open("127.0.0.1", 2)) == 2
        pool.close_all()

    asyncio.run(main())
