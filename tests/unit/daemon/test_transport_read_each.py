"""The transport reads one datagram per recvfrom while COOKIEs are not demanded from everyone
(core_ike/io/transport.py _readable): the engine gets each datagram with its source as (ip, port), on
IPv4 and IPv6, IKE on the NAT-T port without its non-ESP marker, keepalives counted, and answers go back
to their source."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.unit.daemon.flushwait import after_batches, datagrams
from tests.unit.daemon.stubengine import Addr, StubEngine, client, started


class _Recorder(StubEngine):
    """Answers every IKE message with its reversed octets."""

    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        super().receive(data, local, remote, now)
        self.out.append((data[::-1], local, remote))


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
        with started(eng, [ip]) as t, client(ip) as c:
            (addr,) = t.sockets
            for m in (b"first", b"second", b"third"):
                c.sendto(m, addr)
            got = await datagrams(c, 3)
            assert [r for _, _, r in eng.got] == [c.getsockname()[:2]] * 3
            assert all(local == addr for _, local, _ in eng.got) and t.stats["rx"] == 3
            return got

    assert asyncio.run(run()) == [b"tsrif", b"dnoces", b"driht"]


def test_natt_port_strips_the_marker_and_counts_keepalives() -> None:
    eng = _Recorder()

    async def run() -> None:
        with started(eng) as t, client() as c:
            (addr,) = t.sockets
            eng.natt_port = addr[1]
            c.sendto(b"\xff", addr)  # RFC 3948 2.3: a NAT keepalive
            c.sendto(bytes(4) + b"ike message", addr)  # RFC 3948 2.2: the non-ESP marker
            await after_batches(t, lambda: eng.got and t.stats["keepalive"], "the IKE message and the keepalive")
            assert [d for d, _, _ in eng.got] == [b"ike message"] and t.stats["keepalive"] == 1

    asyncio.run(run())
