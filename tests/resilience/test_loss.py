"""Setups under 30 % random packet loss in both NATs (scenarios/lab/loss.py; docs/operations.md, "Loss").

Our mediation server and clients on a nat_lab: a mediated connection alice -> bob (both mediation SAs up
before the loss starts; alice <-> carol crosses one lossy NAT, alice <-> bob two), and a direct IKE_SA +
CHILD_SA alice -> carol (iked on both). Each setup must succeed; the times are printed, not asserted
(bench/loss_setup.py measures the distribution: bench/results/loss_setup.txt).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scenarios.lab import lab_session, nat_lab
from scenarios.lab.direct import OurDirect
from scenarios.lab.events import wait_daemons
from scenarios.lab.loss import add_loss, loss_counters
from scenarios.lab.mediation import OurMediation
from scenarios.lab.medsetup import forget_direct_mappings
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="daemons behind lossy NATs in network namespaces")]

LOSS = 30
RUNS = 3


@pytest.fixture(scope="module")
def mediation() -> Iterator[OurMediation]:
    with lab_session(nat_lab) as lab:
        med = OurMediation(lab)
        try:
            med.start_server()
            for p in ("bob", "alice"):
                med.start_client(p)
            med.wait_registered("alice", "bob", timeout=15)
            yield med
        finally:
            med.stop()


@pytest.fixture(scope="module")
def direct() -> Iterator[OurDirect]:
    with lab_session(nat_lab) as lab:
        d = OurDirect(lab)
        try:
            d.start()
            yield d
        finally:
            d.stop()


def _forget_mediated(med: OurMediation) -> None:
    """Without loss: down the mediated IKE_SA on alice, wait until both peers forgot it."""
    alice, bob = med.clients["alice"], med.clients["bob"]
    for sa in alice.list_sas():
        if sa["name"] == "bob":
            alice.ctl({"cmd": "down", "ike": sa["uniqueid"], "timeout": 5}, timeout=10)
    wait_daemons(lambda: not any(s["name"] == "bob" for s in alice.list_sas())
                 and not any(s["name"] == "alice" for s in bob.list_sas()), 15, [alice, bob],
                 what="mediated SAs gone")
    forget_direct_mappings(med.lab)


@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_mediated_setup_under_loss(mediation: OurMediation, run: int) -> None:
    lab, alice = mediation.lab, mediation.clients["alice"]
    add_loss(lab, percent=LOSS)
    try:
        t0 = time.monotonic()
        r = alice.ctl({"cmd": "up", "conn": "bob", "timeout": 50}, timeout=55)
        took = time.monotonic() - t0
        dropped = sum(loss_counters(lab).values())
    finally:
        add_loss(lab, percent=0)
    assert r.get("ok"), f"{r.get('error')}\n{alice.log_tail(60)}"
    (sa,) = [s for s in alice.list_sas() if s["name"] == "bob"]
    assert sa["state"] == "ESTABLISHED" and sa["child-sas"]
    print(f"mediated setup {run} under {LOSS} % loss per NAT: {took:.2f} s ({dropped} packets dropped)")
    _forget_mediated(mediation)


@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_direct_setup_under_loss(direct: OurDirect, run: int) -> None:
    lab = direct.lab
    add_loss(lab, percent=LOSS)
    try:
        took = direct.setup(50.0)
        dropped = sum(loss_counters(lab).values())
    finally:
        add_loss(lab, percent=0)
    (sa,) = direct.alice.list_sas()
    assert sa["state"] == "ESTABLISHED" and sa["child-sas"]
    print(f"direct IKE_SA + CHILD_SA {run} under {LOSS} % loss in natA: {took:.2f} s ({dropped} packets dropped)")
    direct.reset()
