"""The transport reads one datagram per recvfrom while COOKIEs are not demanded from everyone
(core_ike/io/transport.py _read_each): the engine gets each datagram with its source as (ip, port), on
IPv4 and IPv6, IKE on the NAT-T port without its non-ESP marker, keepalives counted, and answers go back
to their source."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from core_ike.io.transport import UdpTransport
from tests.unit.daemon.flushwait import after_batches, datagrams


class _Recorder:
    """Answers every IKE message with its reversed octets; keeps (data, local, remote)."""

    natt_port = -1

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.out: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        self.got.append((data, local, remote))
        self.out.append((data[::-1], local, remote))

    def datagrams_to_send(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def next_event(self) -> Any:
        return None


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_each_datagram_with_its_source_and_the_answer_back(ip: str) -> None:
    if ip == "::1" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback address in this network namespace")
    eng = _Recorder()

    async def run() -> list[bytes]:
        t = UdpTransport(eng, [ip], [0])  # type: ignore[arg-type]
        t.start()
        (addr,) = t.sockets
        c = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((ip, 0))
        c.setblocking(False)
        try:
            for m in (b"first", b"second", b"third"):
                c.sendto(m, addr)
            got = await datagrams(c, 3)
            assert [r for _, _, r in eng.got] == [c.getsockname()[:2]] * 3
            assert all(local == addr for _, local, _ in eng.got) and t.stats["rx"] == 3
            return got
        finally:
            c.close()
            t.close()

    assert asyncio.run(run()) == [b"tsrif", b"dnoces", b"driht"]


def test_natt_port_strips_the_marker_and_counts_keepalives() -> None:
    eng = _Recorder()

    async def run() -> None:
        t = UdpTransport(eng, ["127.0.0.1"], [0])  # type: ignore[arg-type]
        t.start()
        (addr,) = t.sockets
        eng.natt_port = addr[1]
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setblocking(False)
        try:
            c.sendto(b"\xff", addr)  # RFC 3948 2.3: a NAT keepalive
            c.sendto(bytes(4) + b"ike message", addr)  # RFC 3948 2.2: the non-ESP marker
            await after_batches(t, lambda: eng.got and t.stats["keepalive"], "the IKE message and the keepalive")
            assert [d for d, _, _ in eng.got] == [b"ike message"] and t.stats["keepalive"] == 1
        finally:
            c.close()
            t.close()

    asyncio.run(run())
