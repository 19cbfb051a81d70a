"""Setups under 30 % random packet loss in both NATs (scenarios/lab/loss.py; docs/operations.md, "Loss").

Our mediation server and clients on a nat_lab: a mediated connection alice -> bob (both mediation SAs up
before the loss starts; alice <-> carol crosses one lossy NAT, alice <-> bob two), and a direct IKE_SA +
CHILD_SA alice -> carol (iked on both). Each setup must succeed; the times are printed, not asserted
(bench/loss_setup.py measures the distribution: bench/results/loss_setup.txt).

Even daemons that do everything right fail a mediated setup by chance about once in 50 (alice-bob: four lossy
crossings per try, about 20 tries in 50 s: tests/resilience/test_loss_budget.py), so a failed setup is tried
once more from fresh daemons. A mediated setup runs with captures on both sides of both NATs
(scenarios/lab/loss.py, ``watch_hops``): a failed try prints, per hop, which packets of each flow crossed it,
the NATs' conntrack tables and both peers' logs; a failed test keeps the lab's directory (pcaps, logs) and
names it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import pytest

from scenarios.lab import lab_session, nat_lab
from scenarios.lab.direct import OurDirect
from scenarios.lab.events import wait_daemons
from scenarios.lab.loss import add_loss, loss_counters, watch_hops
from scenarios.lab.mediation import OurMediation
from scenarios.lab.medsetup import forget_direct_mappings
from tests.guards import needs
from tests.outcome import failed_since

pytestmark = [pytest.mark.netns, needs("root", why="daemons behind lossy NATs in network namespaces")]

LOSS = 30
RUNS = 3
BUDGET = 50.0  # seconds each mediated setup may take
ATTEMPTS = 2  # tries per mediated setup (test_mediated_setup_under_loss)


@pytest.fixture(scope="module")
def mediation(request: pytest.FixtureRequest) -> Iterator[OurMediation]:
    with lab_session(nat_lab, failed=failed_since(request)) as lab:
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
def direct(request: pytest.FixtureRequest) -> Iterator[OurDirect]:
    with lab_session(nat_lab, failed=failed_since(request)) as lab:
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


def _mediated_setup(med: OurMediation, name: str) -> tuple[float | None, str]:
    """`up` bob on alice under LOSS, captured at both NATs (scenarios/lab/loss.py, watch_hops): (seconds, "")
    or (None, what the failure looked like: per hop and in both peers' logs)."""
    lab, alice, bob = med.lab, med.clients["alice"], med.clients["bob"]
    with watch_hops(lab, name=name.replace(" ", "-")) as hops:
        add_loss(lab, percent=LOSS)
        try:
            t0 = time.monotonic()
            r = alice.ctl({"cmd": "up", "conn": "bob", "timeout": BUDGET}, timeout=BUDGET + 5)
            took = time.monotonic() - t0
            dropped = loss_counters(lab)
        finally:
            add_loss(lab, percent=0)
    if r.get("ok"):
        print(f"{name} under {LOSS} % loss per NAT: {took:.2f} s ({sum(dropped.values())} packets dropped)")
        return took, ""
    return None, (f"{name}: {r.get('error')}; dropped per NAT {dropped}; lab files {lab.dir}\n{hops.report()}\n"
                  f"alice:\n{alice.log_tail(60)}\nbob:\n{bob.log_tail(60)}")


def _restart_peers(med: OurMediation) -> None:
    """After a failed setup: both clients afresh (the attempt and its IKE_SA may still be under way on either
    side), the NATs' mappings forgotten, both registered again."""
    for p in ("alice", "bob"):
        med.clients[p].stop()
    med.lab.flush_conntrack()
    for p in ("bob", "alice"):
        med.clients[p].start().wait_sas(lambda sas: any(s["name"] == "medsrv" and s["state"] == "ESTABLISHED"
                                                        for s in sas), timeout=15)
    med.wait_registered("alice", "bob", timeout=15)


@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_mediated_setup_under_loss(mediation: OurMediation, run: int) -> None:
    """A setup that fails within BUDGET gets ATTEMPTS - 1 more, each from fresh daemons: a correct one still
    fails by chance about once in 50 setups (`chance_failure`, tests/resilience/test_loss_budget.py), so one
    try each would fail this module about once in 20 runs; a failed try's trace is printed and a warning names
    it. After a last failed try the daemons are fresh too, so the next run does not meet its leftovers (an IKE_SA
    that came up late installs a tunnel between the peers' addresses)."""
    failures: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        name = f"mediated setup {run}" + (f" try {attempt}" if attempt > 1 else "")
        took, failure = _mediated_setup(mediation, name)
        if took is not None:
            break
        failures.append(failure)
        print(failure)
        # in the run's summary though the next try passes (its trace is in the test's captured output)
        warnings.warn(f"{failure.splitlines()[0]}: tried again from fresh daemons", stacklevel=1)
        _restart_peers(mediation)
    assert took is not None, "\n\n".join(failures)
    (sa,) = [s for s in mediation.clients["alice"].list_sas() if s["name"] == "bob"]
    assert sa["state"] == "ESTABLISHED" and sa["child-sas"]
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
