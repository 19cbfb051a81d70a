"""Batched UDP receive and send (core_ike/io/mmsg.py) against real loopback sockets: recvmmsg/sendmmsg
through ctypes, and the recvfrom/sendto loop used where they are missing, give the same results."""

from __future__ import annotations

import socket
import time

import pytest

from core_ike.io import mmsg
from core_ike.io.mmsg import RecvBatch, SendBatch

MODES = [pytest.param(True, id="mmsg"), pytest.param(False, id="fallback")]


def _receiver(fam: int, host: str) -> socket.socket:
    r = socket.socket(fam, socket.SOCK_DGRAM)
    r.bind((host, 0))
    r.setblocking(False)
    return r


def _collect(rb: RecvBatch, sock: socket.socket | int, want: int) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    deadline = time.monotonic() + 5.0
    while len(got) < want and time.monotonic() < deadline:
        if rb.recv(sock):
            got += list(rb)
    return got


def test_recvmmsg_is_found_in_libc() -> None:
    assert mmsg.AVAILABLE  # Linux glibc and musl both have it; the fast path must not silently fall back


@pytest.mark.parametrize("use_mmsg", MODES)
@pytest.mark.parametrize(("fam", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_batch_receive_of_mixed_sources_and_batch_send(use_mmsg: bool, fam: int, host: str) -> None:
    if fam == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("this Python is built without IPv6 (socket.has_ipv6 is False): no ::1 socket to test")
    r = _receiver(fam, host)
    senders = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in senders:
            s.bind((host, 0))
            s.settimeout(5.0)
        sent = [(bytes([i]) * (i * 50 + 1), senders[i % 3]) for i in range(11)]
        for data, s in sent:
            s.sendto(data, r.getsockname()[:2])
        rb = RecvBatch(4, 2048, use_mmsg=use_mmsg)
        got = _collect(rb, r, len(sent))
        # every datagram, in order, each with the address and port of the socket that sent it
        assert got == [(d, (host, s.getsockname()[1])) for d, s in sent]
        assert rb.recv(r) == 0 and list(rb) == []  # nothing queued: no block, no error

        sb = SendBatch(8, 2048, use_mmsg=use_mmsg)
        for data, addr in got[:6]:
            sb.append(b"re:" + data, addr)
        assert len(sb) == 6
        assert sb.flush(r) == 6 and len(sb) == 0
        for data, s in sent[:6]:
            echo, src = s.recvfrom(4096)
            assert echo == b"re:" + data and src[:2] == r.getsockname()[:2]
    finally:
        r.close()
        for s in senders:
            s.close()


@pytest.mark.parametrize("use_mmsg", MODES)
def test_a_batch_reads_at_most_its_count_and_views_match(use_mmsg: bool) -> None:
    r = _receiver(socket.AF_INET, "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        for i in range(5):
            c.sendto(b"%d" % i * 3, r.getsockname())
        rb = RecvBatch(2, 64, use_mmsg=use_mmsg)
        deadline = time.monotonic() + 5.0
        while not rb.recv(r) and time.monotonic() < deadline:
            pass
        assert rb.n == 2 and rb.lengths == (3, 3)
        assert bytes(rb.view(1)) == rb.data(1) == b"111"
        assert rb.buf[rb.offset(0): rb.offset(0) + 3] == b"000"
        assert rb.address(0) == ("127.0.0.1", c.getsockname()[1])
        assert rb.addrs[rb.addr_offset(0) + 4: rb.addr_offset(0) + 8] == socket.inet_aton("127.0.0.1")
    r.close()


def test_send_batch_refuses_more_than_its_slots() -> None:
    sb = SendBatch(2, 16)
    sb.append(b"a", ("127.0.0.1", 9))
    sb.append(b"b", ("127.0.0.1", 9))
    assert sb.full
    with pytest.raises(ValueError, match="full"):
        sb.append(b"c", ("127.0.0.1", 9))
    sb = SendBatch(2, 16)
    with pytest.raises(ValueError, match="exceed"):
        sb.append(b"x" * 17, ("127.0.0.1", 9))


@pytest.mark.parametrize("use_mmsg", MODES)
def test_a_refused_datagram_does_not_stop_the_others(use_mmsg: bool) -> None:
    r = _receiver(socket.AF_INET, "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        c.settimeout(5.0)
        sb = SendBatch(4, 2048, use_mmsg=use_mmsg)
        sb.append(b"one", c.getsockname())
        sb.append(b"x", ("255.255.255.255", 9))  # broadcast without SO_BROADCAST: EACCES
        sb.append(b"two", c.getsockname())
        assert sb.flush(r) == 2
        assert sb.errors == 1 and sb.last_error != 0
        assert [c.recv(64), c.recv(64)] == [b"one", b"two"]
    r.close()


def test_the_fallback_takes_a_file_descriptor_without_closing_it() -> None:
    r = _receiver(socket.AF_INET, "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"fd", r.getsockname())
        rb = RecvBatch(4, 64, use_mmsg=False)
        assert _collect(rb, r.fileno(), 1) == [(b"fd", ("127.0.0.1", c.getsockname()[1]))]
        r.getsockname()  # still open
    r.close()


def test_sockaddr_round_trip_with_ipv6_scope() -> None:
    buf = bytearray(mmsg.ADDR_STRIDE)
    assert mmsg.encode_sockaddr(("192.0.2.7", 500), buf, 0) == 16
    assert mmsg.decode_sockaddr(bytes(buf), 0) == ("192.0.2.7", 500)
    assert mmsg.encode_sockaddr(("2001:db8::1", 4500), buf, 0) == 28
    assert mmsg.decode_sockaddr(bytes(buf), 0) == ("2001:db8::1", 4500)
    mmsg.encode_sockaddr(("fe80::1%1", 500), buf, 0)
    assert mmsg.decode_sockaddr(bytes(buf), 0) == (f"fe80::1%{socket.if_indextoname(1)}", 500)
