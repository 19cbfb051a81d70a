"""The mediation server restarts (kill -9, or SIGTERM as `systemctl restart` does) under two registered
clients with default settings: both register again by themselves and mediation works after.

kill -9: the clients' DPD (on by default for mediation connections, 20 s) reaches the restarted server,
which answers INVALID_IKE_SPI (RFC 7296 2.21.4); the client re-registers at once.
SIGTERM: the server DELETEs every mediation SA before it exits; the clients re-register at once and
reach the new server with their IKE_SA_INIT retransmissions.
"""

from __future__ import annotations

import signal
import time

import pytest

from scenarios.lab import Lab
from scenarios.lab.mediation import LAN, OurMediation
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="daemons behind NATs in network namespaces")]


@pytest.fixture
def med(nat_lab_per_test: Lab):  # type: ignore[no-untyped-def]
    m = OurMediation(nat_lab_per_test)
    try:
        m.start_server()
        for p in ("alice", "bob"):
            m.start_client(p)  # default settings: no dpd_delay, no reconnect given
        m.wait_registered("alice", "bob")
        yield m
    finally:
        m.stop()


def _restart(med: OurMediation, sig: int) -> float:
    """Stop the server with `sig`, start it again; seconds until both clients are registered again."""
    assert med.server is not None
    first = {p["identity"]: p["ike"] for p in med.server.status()["peers"]}
    med.server.lab.stop(med.server.proc, sig=sig)
    med.server.proc = None
    med.server.start()
    t0 = time.monotonic()
    again = med.wait_registered("alice", "bob", timeout=60)
    took = time.monotonic() - t0
    assert {p["identity"] for p in again} == set(first)
    return took


def _mediation_works(med: OurMediation) -> None:
    r = med.clients["alice"].up("bob", timeout=20)
    assert r["ok"]
    assert med.lab.ping("alice", LAN["bob"], source=LAN["alice"], count=2, interval=0.1)[1] == 2


def test_kill_9_and_restart(med: OurMediation) -> None:
    took = _restart(med, signal.SIGKILL)
    log = med.clients["alice"].log_text()
    assert "the peer answered INVALID_IKE_SPI" in log, log[-2000:]
    assert "re-establishing now" in log
    _mediation_works(med)
    print(f"kill -9: both clients registered again {took:.1f} s after the restart")


def test_sigterm_and_restart(med: OurMediation) -> None:
    took = _restart(med, signal.SIGTERM)
    for c in med.clients.values():
        log = c.log_text()
        assert "received DELETE for IKE_SA" in log and "re-establishing now" in log, log[-2000:]
    _mediation_works(med)
    print(f"SIGTERM: both clients registered again {took:.1f} s after the restart")


def test_restarted_server_answers_unknown_spis(med: OurMediation) -> None:
    """The server's side of it: the restarted server counts what it answered."""
    _restart(med, signal.SIGKILL)
    assert med.server is not None
    med.server.wait_state(lambda: med.server.ctl({"cmd": "stats"})["stats"]["counters"].get("invalid-spi-sent", 0) >= 2,
                          5, "INVALID_IKE_SPI counted")  # each one logs "sending INVALID_IKE_SPI ..."
