"""The batched COOKIE path (core_ike/io/transport.py with core_ike/ike/prefilter.py Prefilter.answer_batch)
on real loopback sockets: while COOKIEs are demanded a burst of cookie-less IKE_SA_INIT requests is
answered from raw octets with valid COOKIEs (RFC 7296 2.6), a request that returns a valid COOKIE reaches
the engine, and broken requests are dropped, counted, with one rate-limited log line."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any

import pytest

from core_ike.codec.message import Message, decode_message, encode_message
from core_ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from core_ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from core_ike.crypto.proposals import parse_proposals
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine, EngineConfig
from core_ike.ike.prefilter import InitIndex, cookie_reply
from core_ike.io import mmsg as mmsg_mod
from core_ike.io.mmsg import RecvBatch, SendBatch
from core_ike.io.transport import UdpTransport
from tests.unit.daemon.flushwait import after_batches, datagrams


def _init(spi: bytes, nonce: bytes, cookie: bytes | None = None, natt: bool = False) -> bytes:
    payloads: list[Any] = [SaPayload(parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)),
                KePayload(31, b"\x09" * 32), NoncePayload(nonce)]
    if cookie is not None:
        payloads.insert(0, NotifyPayload(NotifyType.COOKIE, cookie))
    data = encode_message(Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, payloads))[0]
    return bytes(4) + data if natt else data


def _transport(natt: bool, host: str = "127.0.0.1", **cfg: object) -> tuple[Engine, UdpTransport]:
    # one test client sends everything: no per-source limit unless a test sets one
    eng = Engine([], Credentials(), EngineConfig(**{"force_cookies": True, "init_rate_ip": 0.0, **cfg}))  # type: ignore[arg-type]
    t = UdpTransport(eng, [host], [0])
    if not natt:
        eng.natt_port = -1
    return eng, t


@pytest.mark.parametrize(("fam", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("mmsg", [True, False], ids=["mmsg", "recvfrom"])
@pytest.mark.parametrize("natt", [False, True], ids=["ike-port", "natt-port"])
def test_a_burst_is_answered_with_valid_cookies_and_a_cookie_gets_through(
    natt: bool, mmsg: bool, fam: int, host: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mmsg_mod, "AVAILABLE", mmsg)  # without recvmmsg/sendmmsg: the same, a call each

    async def run() -> None:
        eng, t = _transport(natt, host=host)
        t.start()
        try:
            port = next(iter(t.sockets))[1]
            assert t._rb.mmsg is mmsg and t._sb.mmsg is mmsg
            if natt:
                eng.natt_port = port  # the socket is the NAT-T one: non-ESP marker (RFC 3948 2.2)
            with socket.socket(fam, socket.SOCK_DGRAM) as c:
                c.bind((host, 0))
                c.setblocking(False)
                reqs = [(struct.pack("!Q", 0x1000 + i), bytes([i]) * 32) for i in range(150)]
                for spi, ni in reqs:
                    c.sendto(_init(spi, ni, natt=natt), (host, port))
                replies = await datagrams(c, len(reqs))
                assert eng.counters["cookies-sent"] == len(reqs)
                assert not eng.sas and not eng.half_open  # no state for any of them
                by_spi = {r[4:12] if natt else r[:8]: r for r in replies}
                for spi, ni in reqs:
                    r = by_spi[spi]
                    if natt:
                        assert r[:4] == bytes(4)
                        r = r[4:]
                    cookie = decode_message(r).notify(NotifyType.COOKIE).data  # type: ignore[union-attr]
                    assert r == cookie_reply(spi, bytes(4), cookie)  # what the encoder builds
                    assert eng.cookies.valid(cookie, ni, host, spi, eng.now)
                    assert not eng.cookies.valid(cookie, ni, "::2" if ":" in host else "127.0.0.2", spi, eng.now)  # bound to IPi
                # the first one comes back with its COOKIE: past the pre-filter, the engine answers it
                # (no connection is configured: NO_PROPOSAL_CHOSEN, RFC 7296 2.21.1)
                spi, ni = reqs[0]
                r = by_spi[spi][4:] if natt else by_spi[spi]
                cookie = decode_message(r).notify(NotifyType.COOKIE).data  # type: ignore[union-attr]
                c.sendto(_init(spi, ni, cookie, natt), (host, port))
                (answer,) = await datagrams(c, 1)
                msg = decode_message(answer[4:] if natt else answer)
                assert msg.spi_i == spi and msg.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None
                assert eng.counters["cookies-sent"] == len(reqs)
                # a forged COOKIE is answered with a fresh one, as a request without any
                c.sendto(_init(spi, ni, b"\x00" + bytes(32), natt), (host, port))
                (again,) = await datagrams(c, 1)
                assert decode_message(again[4:] if natt else again).notify(NotifyType.COOKIE) is not None
                assert eng.counters["cookies-sent"] == len(reqs) + 1
        finally:
            t.close()

    asyncio.run(run())


def test_broken_requests_are_dropped_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        eng, t = _transport(False)
        t.start()
        try:
            port = next(iter(t.sockets))[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.bind(("127.0.0.1", 0))
                c.setblocking(False)
                good = _init(b"\x77" * 8, b"\x33" * 32)
                for i in range(200):
                    c.sendto(_init(struct.pack("!Q", i + 1), b"n" * 8), ("127.0.0.1", port))  # Nonce too short
                    if i % 50 == 0:
                        c.sendto(good[:-5] + good[-5:], ("127.0.0.1", port))
                    c.sendto(b"\x01" * 12, ("127.0.0.1", port))  # shorter than the IKE header
                await datagrams(c, 4)  # the good ones get their COOKIEs, nothing else is answered
                await after_batches(t, lambda: eng.counters["drop-invalid"] == 200 and eng.counters["drop-malformed"] == 200,
                             "every broken datagram counted")
                assert eng.counters["cookies-sent"] == 4
        finally:
            t.close()

    with caplog.at_level(logging.INFO, logger="core_ike"):
        asyncio.run(run())
    invalid = [r for r in caplog.records if "without a usable Nonce" in r.getMessage()]
    malformed = [r for r in caplog.records if "shorter than the IKE header" in r.getMessage()]
    assert 1 <= len(invalid) < 50 and 1 <= len(malformed) < 50  # LogLimiter: 10 per second, not 200


def test_per_source_limit_applies_to_the_batch() -> None:
    async def run() -> None:
        eng, t = _transport(False, init_rate_ip=5.0)
        t.start()
        try:
            port = next(iter(t.sockets))[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.bind(("127.0.0.1", 0))
                c.setblocking(False)
                for i in range(40):
                    c.sendto(_init(struct.pack("!Q", i + 1), b"\x44" * 32), ("127.0.0.1", port))
                await after_batches(t, lambda: eng.counters["cookies-sent"] + eng.counters["drop-init-rate"] == 40,
                             "every request decided")
                # about one second's worth (5) is answered: the clock may move on during the burst
                assert 4 <= eng.counters["cookies-sent"] < 40 and eng.counters["drop-init-rate"] > 0
        finally:
            t.close()

    asyncio.run(run())


def test_init_index_counts_its_spis() -> None:
    idx: InitIndex[str] = InitIndex()
    a, b = b"\x01" * 8, b"\x02" * 8
    idx[(a, ("192.0.2.1", 500))] = "x"
    idx[(a, ("192.0.2.2", 500))] = "y"
    idx[(a, ("192.0.2.2", 500))] = "z"  # replaced, not counted twice
    idx[(b, ("192.0.2.1", 500))] = "w"
    assert idx.spis == {a: 2, b: 1}
    del idx[(a, ("192.0.2.1", 500))]
    assert idx.pop((a, ("192.0.2.2", 500))) == "z" and idx.pop((a, ("192.0.2.9", 500)), None) is None
    assert idx.spis == {b: 1}
    idx.clear()
    assert idx.spis == {} and not idx


def test_a_request_whose_spi_the_engine_knows_is_passed_on() -> None:
    """A retransmitted IKE_SA_INIT of an IKE_SA the engine made before COOKIEs were demanded is the
    engine's to answer (from its response cache), not the batch's."""
    eng = Engine([], Credentials(), EngineConfig(force_cookies=True, init_rate_ip=0.0))
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        known = b"\x42" * 8
        eng.init_index[(known, ("127.0.0.1", c.getsockname()[1]))] = object()  # type: ignore[assignment]
        for spi in (b"\x41" * 8, known, b"\x43" * 8):
            c.sendto(_init(spi, b"\x55" * 32), r.getsockname())
        rb, sb = RecvBatch(8), SendBatch(8, 128)
        got = 0
        deadline = time.monotonic() + 10.0
        while got < 3 and time.monotonic() < deadline:
            got = rb.recv(r, 8) or got
        assert got == 3
        passed = eng.prefilter.answer_batch(rb, 3, sb, False, False, 1.0)
        assert [rb.data(i)[:8] for i in passed] == [known]
        assert len(sb) == 2 and eng.counters["cookies-sent"] == 2
    r.close()


def test_a_returned_cookie_counts_once_against_the_source_limit() -> None:
    """The batch leaves a request with a valid COOKIE to the engine, whose pre-filter applies the
    per-source limit to it: one count per request, as without batches (2 per second: the first request
    and its retry with the COOKIE both fit)."""
    eng = Engine([], Credentials(), EngineConfig(force_cookies=True, init_rate_ip=2.0))
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    rb, sb = RecvBatch(4), SendBatch(4, 128)

    def one(data: bytes, c: socket.socket) -> None:
        c.sendto(data, r.getsockname())
        deadline = time.monotonic() + 10.0
        while not rb.recv(r, 1):
            assert time.monotonic() < deadline, "datagram not received"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        spi, ni = b"\x61" * 8, b"\x62" * 32
        one(_init(spi, ni), c)
        assert list(eng.prefilter.answer_batch(rb, 1, sb, False, False, 1.0)) == [] and len(sb) == 1
        cookie = decode_message(sb.buf[:69]).notify(NotifyType.COOKIE).data  # type: ignore[union-attr]
        one(_init(spi, ni, cookie), c)
        assert list(eng.prefilter.answer_batch(rb, 1, sb, False, False, 1.0)) == [0]
        eng.receive(rb.data(0), ("127.0.0.1", r.getsockname()[1]), rb.address(0), 1.0)
        assert eng.counters["drop-init-rate"] == 0
        (answer, _local, _remote), = eng.datagrams_to_send()
        assert decode_message(answer).notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None  # past the pre-filter
    r.close()
