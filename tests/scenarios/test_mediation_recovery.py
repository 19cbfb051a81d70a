"""The mediation connection stays up: after the mediation server restarts, the clients notice (DPD)
and re-establish their mediation SAs by themselves, and mediation works again."""

from __future__ import annotations

import time

import pytest

from scenarios.lab import Lab
from scenarios.lab.mediation import LAN, OurMediation
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="daemons behind NATs in network namespaces")]

FAST_DPD = """dpd_delay = "1s"
[connections.medsrv.retransmit]
timeout = 0.4
base = 1.5
tries = 2
"""


def test_clients_reregister_after_server_restart(nat_lab_per_test: Lab) -> None:
    lab = nat_lab_per_test
    med = OurMediation(lab)
    try:
        med.start_server()
        for p in ("alice", "bob"):
            med.start_client(p, client="reconnect = 0.5", mediation_extra=FAST_DPD)
        first = {p["identity"]: p["ike"] for p in med.wait_registered("alice", "bob")}
        assert med.server is not None
        med.server.stop()
        lab.flush_conntrack()
        t0 = time.monotonic()
        med.start_server()
        again = med.wait_registered("alice", "bob", timeout=20)
        took = time.monotonic() - t0
        assert {p["identity"] for p in again} == set(first)
        logs = med.clients["alice"].log_text()
        assert "re-establishing" in logs, logs[-2000:]
        r = med.clients["alice"].up("bob", timeout=20)
        assert r["ok"]
        assert lab.ping("alice", LAN["bob"], source=LAN["alice"], count=2, interval=0.1)[1] == 2
        print(f"clients re-registered {took:.1f} s after the server restart")
    finally:
        med.stop()
