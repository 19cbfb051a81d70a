"""core_ike.io.fastpath falls back when the kernel refuses a step: UDP_SEGMENT refused (EIO, as for a
route whose device cannot checksum) -> logged once, that run and every later one sent datagram by
datagram, nothing lost; UDP_GRO refused -> logged, reads stay one datagram each. The socket is an
in-memory stand-in that records what it was asked to send."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import pytest

from core_ike.io.fastpath import SOL_UDP, UDP_SEGMENT, UdpEspIo, enable_gro


class RefusingSocket:
    def __init__(self, refuse: int | None) -> None:
        self.refuse = refuse
        self.sent: list[bytes] = []
        self.gso_calls = 0

    def sendmsg(self, bufs: list[bytes], anc: list[tuple[int, int, bytes]], flags: int, addr: Any) -> int:
        assert anc[0][:2] == (SOL_UDP, UDP_SEGMENT)
        self.gso_calls += 1
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        self.sent += bufs
        return sum(map(len, bufs))

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append(data)
        return len(data)


class Transport:
    def __init__(self, s: RefusingSocket) -> None:
        self.sockets: dict[tuple[str, int], Any] = {}
        self.s = s

    def socket_for(self, local: tuple[str, int]) -> Any:
        return self.s


def io_for(s: RefusingSocket) -> UdpEspIo:
    io = UdpEspIo(Transport(s), 4500, frozenset({"gso", "gro"}), lambda batch: None, clock=lambda: 0.0)
    io._sources["127.0.0.1"] = (0.0, s)  # type: ignore[assignment]  # no route lookup in a unit test
    return io


def test_udp_segment_refused_falls_back_once(caplog: pytest.LogCaptureFixture) -> None:
    s = RefusingSocket(errno.EIO)
    io = io_for(s)
    pkts = [bytes([i]) * 100 for i in range(5)]
    with caplog.at_level(logging.INFO, logger="core_ike.io.userspace"):
        io.send(pkts, ("127.0.0.1", 4500))
        io.send(pkts, ("127.0.0.1", 4500))
    assert s.sent == pkts + pkts  # nothing lost, order kept
    assert s.gso_calls == 1 and not io.gso and io.send_errors == 0
    assert sum("UDP_SEGMENT refused" in r.message for r in caplog.records) == 1


def test_udp_segment_used_when_accepted() -> None:
    s = RefusingSocket(None)
    io = io_for(s)
    pkts = [b"a" * 100] * 3 + [b"b" * 40]
    io.send(pkts, ("127.0.0.1", 4500))
    assert s.sent == pkts and s.gso_calls == 1 and io.gso_sends == 1


def test_other_send_errors_are_counted_not_fallen_back() -> None:
    s = RefusingSocket(errno.ENOBUFS)
    io = io_for(s)
    io.send([b"x" * 10] * 3, ("127.0.0.1", 4500))
    assert io.gso and io.send_errors == 3 and s.sent == []


def test_gro_refused_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
            caplog.at_level(logging.INFO, logger="core_ike.io.userspace"):
        assert enable_gro(tcp) is False  # UDP_GRO on a TCP socket: the kernel refuses
    assert any("UDP_GRO refused" in r.message for r in caplog.records)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert enable_gro(udp) is True


def laid_out_packets() -> tuple[memoryview, list[int], list[bytes]]:
    """Five ESP packets back to back, as EspSa.seal_into leaves them: four of 100 octets, one of 40."""
    pkts = [bytes([i]) * 100 for i in range(4)] + [b"z" * 40]
    return memoryview(b"".join(pkts)), [len(p) for p in pkts], pkts


def test_send_laid_out_one_udp_segment_send() -> None:
    s = RefusingSocket(None)
    io = io_for(s)
    buf, sizes, pkts = laid_out_packets()
    io.send_laid_out(buf, sizes, ("127.0.0.1", 4500))
    assert s.gso_calls == 1 and [bytes(b) for b in s.sent] == [b"".join(pkts)]  # one slice, not copies
    assert io.gso_sends == 1 and io.udp_sends == 5


def test_send_laid_out_falls_back_when_refused(caplog: pytest.LogCaptureFixture) -> None:
    s = RefusingSocket(errno.EIO)
    io = io_for(s)
    buf, sizes, pkts = laid_out_packets()
    with caplog.at_level(logging.INFO, logger="core_ike.io.userspace"):
        io.send_laid_out(buf, sizes, ("127.0.0.1", 4500))
        io.send_laid_out(buf, sizes, ("127.0.0.1", 4500))
    assert [bytes(b) for b in s.sent] == pkts + pkts  # nothing lost, order kept
    assert s.gso_calls == 1 and not io.gso and io.send_errors == 0
    assert sum("UDP_SEGMENT refused" in r.message for r in caplog.records) == 1


def test_mmsg_step_reads_and_sends_in_batches() -> None:
    """`mmsg` without GRO and UDP_SEGMENT: ESP to two peers leaves in one sendmmsg, in order; the reads
    take every queued datagram (ESP to the data plane in one batch, IKE to the transport)."""
    got: list[list[tuple[bytes, tuple[str, int]]]] = []
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (rx, *peers, tx):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        ikes: list[bytes] = []

        class Tr:
            def __init__(self) -> None:
                self.sockets: dict[tuple[str, int], Any] = {}
                self.stats = {"rx": 0, "esp": 0}

            def socket_for(self, local: tuple[str, int]) -> Any:
                return tx

            def deliver_read(self, d: bytes, local: Any, remote: Any, now: float) -> None:
                ikes.append(d)

            def flush(self) -> None:
                pass

        io = UdpEspIo(Tr(), 4500, frozenset({"mmsg"}), got.append, clock=lambda: 0.0)
        dst = [p.getsockname() for p in peers]
        io.socket_for = lambda remote: tx  # type: ignore[method-assign]  # no route lookup in a unit test
        io.send([b"\x01" * 50, b"\x02" * 60], dst[0])
        io.send([b"\x03" * 70], dst[1])
        assert io.mmsg_sends == 0  # held until flush
        io.flush()
        assert io.mmsg_sends == 1 and io.send_errors == 0
        assert [peers[0].recv(100), peers[0].recv(100), peers[1].recv(100)] == [b"\x01" * 50, b"\x02" * 60, b"\x03" * 70]
        src = tx.getsockname()
        rx_addr = rx.getsockname()
        for i in range(100):
            tx.sendto(bytes([0, 0, 0, 0]) + b"ike" if i == 50 else bytes([0, 0, 1, i % 250 + 1]) * 10, rx_addr)
        io._readable(rx, rx_addr)  # type: ignore[arg-type]
        assert len(got) == 1 and len(got[0]) == 99 and all(a == src for _, a in got[0])
        assert ikes == [b"\0\0\0\0ike"] and io.udp_reads == 100 and io.mmsg_reads >= 2
    finally:
        for s in (rx, *peers, tx):
            s.close()
