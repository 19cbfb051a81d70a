"""The classic BPF program that steers datagrams over the workers' SO_REUSEPORT group
(core_ike/io/transport.py: steering_program, open_group), run by the kernel: a real group on loopback,
crafted datagrams, and the socket that receives each one."""

from __future__ import annotations

import socket
import struct

import pytest

from core_ike.errors import LocalError
from core_ike.io.transport import QUEUES, open_group

INITIATOR, RESPONSE = 0x08, 0x20


def _ike(spi_i: bytes, spi_r: bytes, exchange: int, flags: int, first: int = 33, marker: bool = False) -> bytes:
    head = spi_i + spi_r + bytes([first, 0x20, exchange, flags]) + struct.pack("!II", 0, 28)
    return (b"\0\0\0\0" if marker else b"") + head


def _received_by(group: list[socket.socket], data: bytes) -> int:
    """Index in the group of the socket that got `data` (waits for it, at most 2 s)."""
    port = group[0].getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(data, ("127.0.0.1", port))
    import select

    ready, _, _ = select.select(group, [], [], 2.0)
    assert len(ready) == 1, f"{len(ready)} sockets ready"
    got = ready[0].recv(65535)
    assert got == data
    return group.index(ready[0])


@pytest.fixture
def group2() -> list[socket.socket]:
    g = open_group("127.0.0.1", 0, 2, natt=False, receive_buffer=0)
    yield g
    for s in g:
        s.close()


def test_new_ike_sa_init_goes_to_the_worker_of_its_initiator_spi(group2: list[socket.socket]) -> None:
    assert len(group2) == 2 * QUEUES
    for low in range(6):
        spi_i = b"\xaa" * 4 + struct.pack("!I", low)
        worker = low % 2
        plain = _received_by(group2, _ike(spi_i, bytes(8), 34, INITIATOR, first=33))
        cookie = _received_by(group2, _ike(spi_i, bytes(8), 34, INITIATOR, first=41))
        assert (plain, cookie) == (QUEUES * worker + 2, QUEUES * worker + 1)


def test_later_messages_go_to_the_worker_that_tagged_its_spi(group2: list[socket.socket]) -> None:
    ours0, ours1, theirs = b"\x00" + b"\x55" * 7, b"\x01" + b"\x55" * 7, b"\x03" * 8
    # we responded: our SPI is SPIr, the original initiator sets flag I
    assert _received_by(group2, _ike(theirs, ours0, 35, INITIATOR)) == 0
    assert _received_by(group2, _ike(theirs, ours1, 35, INITIATOR)) == QUEUES
    assert _received_by(group2, _ike(theirs, ours1, 37, INITIATOR | RESPONSE)) == QUEUES
    # we initiated: our SPI is SPIi; the IKE_SA_INIT response too (it has a SPIr)
    assert _received_by(group2, _ike(ours1, theirs, 34, RESPONSE)) == QUEUES
    assert _received_by(group2, _ike(ours0, theirs, 37, 0)) == 0
    assert _received_by(group2, _ike(ours1, bytes(8), 34, RESPONSE)) == QUEUES  # a COOKIE for our request
    # too short for an IKE header: worker 0
    assert _received_by(group2, b"\x01" * 5) == 0


def test_natt_port_steers_after_the_marker_and_esp_by_its_spi() -> None:
    g = open_group("127.0.0.1", 0, 2, natt=True, receive_buffer=0)
    try:
        ours1, theirs = b"\x01" + b"\x77" * 7, b"\x09" * 8
        assert _received_by(g, _ike(theirs, ours1, 35, INITIATOR, marker=True)) == QUEUES
        assert _received_by(g, _ike(theirs, b"\x00" + ours1[1:], 35, INITIATOR, marker=True)) == 0
        assert _received_by(g, _ike(theirs[:4] + b"\0\0\0\1", bytes(8), 34, INITIATOR, marker=True)) == QUEUES + 2
        esp = struct.pack("!II", 0x01ABCDEF, 1) + b"\x00" * 40
        assert _received_by(g, esp) == QUEUES
        assert _received_by(g, struct.pack("!II", 0x02ABCDEF, 1) + b"\x00" * 40) == 0
        assert _received_by(g, b"\xff") == 0  # NAT keepalive (RFC 3948 2.3)
    finally:
        for s in g:
            s.close()


def test_one_worker_keeps_the_three_queues() -> None:
    g = open_group("127.0.0.1", 0, 1, natt=False, receive_buffer=0)
    try:
        assert len(g) == QUEUES
        assert _received_by(g, _ike(b"\x11" * 8, bytes(8), 34, INITIATOR)) == 2
        assert _received_by(g, _ike(b"\x11" * 8, bytes(8), 34, INITIATOR, first=41)) == 1
        assert _received_by(g, _ike(b"\x11" * 8, b"\x22" * 8, 35, INITIATOR)) == 0
    finally:
        for s in g:
            s.close()


def test_a_port_in_use_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        port = other.getsockname()[1]
        with pytest.raises(LocalError, match=r"cannot listen on 127\.0\.0\.1"):
            open_group("127.0.0.1", port, 2, natt=False)
