"""bench/ike_flood.py, short and bounded: the generator's datagrams are real IKE_SA_INIT requests from
distinct spoofed sources, and a few seconds of a modest spoofed flood in the lab engage COOKIEs while
legitimate initiators still get their IKE_SA (no timing thresholds)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from types import ModuleType

import pytest

from core_ike.codec.message import decode_message
from core_ike.codec.payloads import KePayload, NoncePayload
from core_ike.constants import ExchangeType
from tests.guards import needs


def test_flood_datagrams_are_ike_sa_init_requests_from_spoofed_sources(
        load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_flood")
    pkts = bench.build_packets(64, 16, "192.0.2.2")
    sources, spis, kes = set(), set(), set()
    for p in pkts:
        assert p[0] == 0x45 and p[9] == socket.IPPROTO_UDP and p[16:20] == socket.inet_aton("192.0.2.2")
        sources.add(socket.inet_ntoa(p[12:16]))
        msg = decode_message(p[28:])
        assert msg.exchange == ExchangeType.IKE_SA_INIT and msg.is_request and msg.spi_r == bytes(8)
        ke, nonce = msg.first(KePayload), msg.first(NoncePayload)
        assert ke is not None and nonce is not None and len(ke.data) == 32
        spis.add(msg.spi_i)
        kes.add(ke.data)
    assert len(sources) == 16 and all(s.startswith("100.") for s in sources)
    assert len(spis) == len(kes) == 64


@pytest.mark.netns
@needs("root", why="a spoofed flood in network namespaces")
def test_short_flood_cookies_engage_and_legitimate_initiators_get_through(
        load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_flood")
    a = argparse.Namespace(pps=20000.0, duration=30.0, count=10**7, sources=4096, pool=4096, batch=64, attempts=3,
                           deadline=5.0, gap=0.1, settle=1.0, log_level="info", responder_extra="",
                           legit="ours", legit_retransmit="default")
    with bench.build_lab() as lab:
        r = bench.one_run(lab, a, bench.ROOT, 0)
    assert r["flood"]["sent"] > 10000 and r["flood"]["errors"] == 0
    assert r["counters"].get("cookies-sent", 0) > 1000  # COOKIEs engaged, answered from the raw bytes
    assert r["ok"] == 3
