#!/usr/bin/env python3
"""Setups under random packet loss: mediated connections and direct IKE_SA + CHILD_SA.

Topology: :func:`scenarios.lab.nat_lab` (alice behind natA, bob behind natB, carol on the internet segment),
with :func:`scenarios.lab.loss.add_loss` dropping ``--loss`` % of the packets each NAT forwards
(``numgen random mod 100 < N drop``): alice <-> carol crosses one lossy hop, alice <-> bob two.

Cases, ``--rounds`` runs per driver; the drivers alternate run by run (A B, B A, ...), each in a lab of its own:

- ``mediated``: both mediation SAs are up (brought up before the loss is switched on); the clock runs from
  ``up bob`` on alice until alice lists the mediated IKE_SA with its CHILD_SA installed
  (``bench/mediated_setup.py`` drivers: ours = our mediation server and clients, charon = three charons).
- ``direct``: alice initiates IKE_SA + CHILD_SA to carol (:mod:`scenarios.lab.direct`); the clock runs until
  alice has both.

Between runs the loss is switched off, the SAs are removed on both sides (and the NATs forget the punched
path), then the loss is switched on again: every run starts from the same state (after a failed mediated run
charon is restarted: it keeps the failed mediation queued and would never try again). A run counts as a success
within ``--target`` seconds; ``--limit`` is how long one run may take at all.

    bench/loss_setup.py                                   # ours and charon, both cases, 10 rounds, 30 % loss
    bench/loss_setup.py --drivers ours --cases mediated -v
    bench/loss_setup.py --quick --drivers ours            # a smoke run
    bench/loss_setup.py --out bench/results/loss_setup.txt   # and loss_setup.json (bench/results_io.py)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)
from mediated_setup import OursMediation  # noqa: E402

from scenarios.lab import Lab, cleanup_orphans, nat_lab  # noqa: E402
from scenarios.lab.direct import CharonDirect, OurDirect  # noqa: E402
from scenarios.lab.loss import add_loss, loss_counters  # noqa: E402
from scenarios.lab.medsetup import CharonMediation  # noqa: E402


class _Mediated:
    """A mediated-setup driver (bench/mediated_setup.py) seen through the direct-setup surface."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def start(self) -> None:
        self.inner.start()
        self.inner.bring_up_mediation()

    def setup(self, timeout: float) -> float:
        return float(self.inner.initiate_and_wait(timeout))

    def reset(self, timeout: float = 10.0) -> None:
        self.inner.reset()

    def recover(self) -> None:
        """After a failed run. Ours: nothing, every attempt ends by itself. charon keeps a failed mediation
        queued ("mediation with the same peer is already in progress, queued") and never sends another
        ME_CONNECT: restart the three charons so that each run measures a fresh attempt."""
        if self.name == "charon":
            self.inner.stop()
            self.start()

    def stop(self) -> None:
        self.inner.stop()


DRIVERS: dict[tuple[str, str], Callable[[Lab], Any]] = {
    ("mediated", "ours"): lambda lab: _Mediated(OursMediation(lab)),
    ("mediated", "charon"): lambda lab: _Mediated(CharonMediation(lab)),
    ("direct", "ours"): OurDirect,
    ("direct", "charon"): CharonDirect,
}


@dataclass
class Result:
    case: str
    driver: str
    runs: int
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    dropped: int = 0

    def within(self, target: float) -> int:
        return sum(1 for t in self.times if t <= target)

    def row(self, target: float) -> str:
        if not self.times:
            return (f"{self.case:<9} {self.driver:<7} {0:>2}/{self.runs:<2} {'-':>9} {'-':>17} {len(self.failures):>6} "
                    f"{self.dropped:>8}")
        spread = f"{min(self.times):.2f}-{max(self.times):.2f} s"
        return (f"{self.case:<9} {self.driver:<7} {self.within(target):>2}/{self.runs:<2} "
                f"{statistics.median(self.times):>7.2f} s {spread:>17} {len(self.failures):>6} {self.dropped:>8}")


def _one_run(case: str, drv: Any, lab: Lab, res: Result, i: int, loss: int, limit: float, verbose: bool) -> None:
    """One setup under loss, then the loss off and both sides reset (a failed charon mediation: restarted)."""
    add_loss(lab, percent=loss)
    failed_before = len(res.failures)
    t0 = time.monotonic()
    try:
        t = drv.setup(limit)
        res.times.append(t)
        if verbose:
            print(f"  {case} {drv.name} run {i + 1}: {t:.2f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - a failed run is a data point
        res.failures.append(f"run {i + 1} after {time.monotonic() - t0:.1f} s: {str(e).splitlines()[0]}")
        if verbose:
            print(f"  {case} {drv.name} run {i + 1}: FAILED {res.failures[-1]}", flush=True)
    res.dropped += sum(loss_counters(lab).values())
    add_loss(lab, percent=0)
    try:
        drv.reset()
        reset_ok = True
    except Exception:  # recoverable drivers start afresh
        if not hasattr(drv, "recover"):
            raise
        reset_ok = False
    if (len(res.failures) > failed_before or not reset_ok) and hasattr(drv, "recover"):
        drv.recover()


def measure_case(case: str, drivers: list[str], rounds: int, loss: int, limit: float,
                 verbose: bool) -> list[Result]:
    """Every driver in a lab of its own, all started; the runs alternate between them (A B, B A, ...)."""
    results = {d: Result(case, d, rounds) for d in drivers}
    labs: dict[str, Lab] = {}
    drvs: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:  # each lab closed after its driver stopped, in reverse order
        for d in drivers:
            labs[d] = stack.enter_context(nat_lab())
            drvs[d] = DRIVERS[(case, d)](labs[d])
            stack.callback(_stop, drvs[d])
            if verbose:
                print(f"{case} {d}: lab {labs[d].dir}", flush=True)
            drvs[d].start()
        for i, d in results_io.interleave(rounds, drivers):
            _one_run(case, drvs[d], labs[d], results[d], i, loss, limit, verbose)
    return [results[d] for d in drivers]


def _stop(drv: Any) -> None:
    with contextlib.suppress(Exception):  # tear the lab down anyway
        drv.stop()


CASE_LABEL = {"mediated": "mediated setups (`up` on alice to the CHILD_SA, both mediation SAs up)",
              "direct": "direct IKE_SA + CHILD_SA (alice behind natA to carol)"}


def differences(case: str) -> list[str]:
    out = ["ours: IKE_SA_INIT, IKE_AUTH and ME_CONNECT are first retransmitted after 0.25 s (x1.2 per try) "
           "until the 4 s x1.8 schedule; charon: its default 4 s x1.8 from the first try (both defaults)"]
    if case == "mediated":
        out.append("charon waits 1000 ms (ME_WAIT_TO_FINISH) for more candidate checks before it starts the "
                   "mediated IKE_SA")
        out.append("after a failed run charon is restarted (it keeps the failed mediation queued and sends no "
                   "new ME_CONNECT); ours recovers by itself")
        rate = getattr(OursMediation, "connect_rate", None)
        if rate is not None and float(rate) != 5.0:
            out.append(f"ours: the server's per-peer ME_CONNECT limit raised to {rate:g}/s (default 5/s)")
    return out


def figures(results: list[Result], loss: int, target: float) -> list[dict[str, Any]]:
    figs = []
    for case in dict.fromkeys(r.case for r in results):
        by = {r.driver: r for r in results if r.case == case}
        o, c = by.get("ours"), by.get("charon")
        label = f"{CASE_LABEL[case]} under {loss} % random loss in each NAT"
        figs.append(results_io.figure(
            f"loss_{case}_within", f"{label}: succeeded within {target:g} s",
            results_io.count(o.within(target), o.runs, "") if o else None,
            results_io.count(c.within(target), c.runs, "") if c else None, better="higher",
            differences=differences(case)))
        figs.append(results_io.figure(
            f"loss_{case}_time", f"{label}: time of the successful runs",
            results_io.sample(o.times, "s", 2) if o else None,
            results_io.sample(c.times, "s", 2) if c else None,
            differences=["medians of the successful runs only (a side with fewer successes drops its slow tail)"]))
    return [f for f in figs if f["ours"] is not None or f["charon"] is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--loss", type=int, default=30, help="percent of the packets each NAT forwards that it drops")
    ap.add_argument("--cases", default="mediated,direct")
    ap.add_argument("--drivers", default="ours,charon")
    ap.add_argument("--target", type=float, default=30.0, help="a run counts when it succeeds within this")
    ap.add_argument("--limit", type=float, help="per-run limit (the up / initiate timeout; default 60 s, "
                    "30 s with --quick)")
    ap.add_argument("-v", "--verbose", action="store_true")
    results_io.add_args(ap, rounds=10)
    args = ap.parse_args(argv)
    rounds = results_io.rounds_of(args)
    limit = args.limit or (30.0 if args.quick else 60.0)
    cleanup_orphans()
    header = results_io.start_header(argv)
    drivers = [d.strip() for d in args.drivers.split(",")]
    results = [r for c in args.cases.split(",") for r in measure_case(c.strip(), drivers, rounds, args.loss, limit,
                                                                      args.verbose)]
    header = results_io.finish_header(header, args.quick, rounds)
    out = [f"setups under {args.loss} % random loss in each NAT (natA, natB forward chains; alice-carol one lossy "
           "hop, alice-bob two); mediated: both mediation SAs up, 'up' on alice -> CHILD_SA installed; "
           "direct: alice -> carol IKE_SA + CHILD_SA; the drivers alternate run by run, each in a lab of its own",
           f"runs per cell {rounds}, per-run limit {limit:g} s; 'ok' = succeeded within {args.target:g} s",
           "",
           f"{'case':<9} {'driver':<7} {'ok':>5} {'median':>9} {'min-max':>17} {'failed':>6} {'dropped':>8}"]
    out += [r.row(args.target) for r in results]
    for r in results:
        if r.times:
            out.append(f"  {r.case} {r.driver} times: {' '.join(f'{t:.2f}' for t in sorted(r.times))}")
    fails = [f"  {r.case} {r.driver} {f}" for r in results for f in r.failures]
    if fails:
        out += ["", "failures:", *fails[:50]]
    results_io.write_results(args.out, "loss_setup", header, figures(results, args.loss, args.target), "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
