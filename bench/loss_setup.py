#!/usr/bin/env python3
"""Setups under random packet loss (issue 9): mediated connections and direct IKE_SA + CHILD_SA.

Topology: :func:`scenarios.lab.nat_lab` (alice behind natA, bob behind natB, carol on the internet segment),
with :func:`scenarios.lab.loss.add_loss` dropping ``--loss`` % of the packets each NAT forwards
(``numgen random mod 100 < N drop``): alice <-> carol crosses one lossy hop, alice <-> bob two.

Cases, each ``--runs`` times per driver:

- ``mediated``: both mediation SAs are up (brought up before the loss is switched on); the clock runs from
  ``up bob`` on alice until alice lists the mediated IKE_SA with its CHILD_SA installed
  (``bench/mediated_setup.py`` drivers: ours = our mediation server and clients, charon = three charons).
- ``direct``: alice initiates IKE_SA + CHILD_SA to carol (:mod:`scenarios.lab.direct`); the clock runs until
  alice has both.

Between runs the loss is switched off, the SAs are removed on both sides (and the NATs forget the punched
path), then the loss is switched on again: every run starts from the same state (after a failed mediated run
charon is restarted: it keeps the failed mediation queued and would never try again). A run counts as a success
within ``--target`` seconds; ``--limit`` is how long one run may take at all.

    bench/loss_setup.py                                   # ours and charon, both cases, 10 runs, 30 % loss
    bench/loss_setup.py --drivers ours --cases mediated -v
    bench/loss_setup.py --out bench/results/loss_setup.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
if _VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

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


def measure(case: str, driver_name: str, runs: int, loss: int, limit: float, verbose: bool) -> Result:
    res = Result(case, driver_name, runs)
    lab = nat_lab()
    drv = DRIVERS[(case, driver_name)](lab)
    if verbose:
        print(f"{case} {driver_name}: lab {lab.dir}", flush=True)
    try:
        drv.start()
        for i in range(runs):
            add_loss(lab, percent=loss)
            failed_before = len(res.failures)
            t0 = time.monotonic()
            try:
                t = drv.setup(limit)
                res.times.append(t)
                if verbose:
                    print(f"  {case} {driver_name} run {i + 1}: {t:.2f} s", flush=True)
            except Exception as e:  # noqa: BLE001 - a failed run is a data point
                res.failures.append(f"run {i + 1} after {time.monotonic() - t0:.1f} s: {str(e).splitlines()[0]}")
                if verbose:
                    print(f"  {case} {driver_name} run {i + 1}: FAILED {res.failures[-1]}", flush=True)
            res.dropped += sum(loss_counters(lab).values())
            add_loss(lab, percent=0)
            try:
                drv.reset()
                reset_ok = True
            except Exception:  # noqa: BLE001 - recoverable drivers start afresh
                if not hasattr(drv, "recover"):
                    raise
                reset_ok = False
            if (len(res.failures) > failed_before or not reset_ok) and hasattr(drv, "recover"):
                drv.recover()
    finally:
        drv.stop()
        lab.teardown()
    return res


def machine(commit: str | None = None) -> list[str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    if commit is None:
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                    text=True, check=False).stdout.strip()
        except OSError:
            commit = "?"
    return [f"machine: {os.cpu_count()} x {model}, Linux {platform.release()}, Python {platform.python_version()}",
            f"commit: {commit or '?'}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--loss", type=int, default=30, help="percent of the packets each NAT forwards that it drops")
    ap.add_argument("--cases", default="mediated,direct")
    ap.add_argument("--drivers", default="ours,charon")
    ap.add_argument("--target", type=float, default=30.0, help="a run counts when it succeeds within this")
    ap.add_argument("--limit", type=float, default=90.0, help="per-run limit (the up / initiate timeout)")
    ap.add_argument("--out", help="also write the report here (e.g. bench/results/loss_setup.txt)")
    ap.add_argument("--commit", help="commit to name in the report (default: git describe of this tree)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    cleanup_orphans()
    started = time.monotonic()
    load0 = os.getloadavg()
    results = [measure(c.strip(), d.strip(), args.runs, args.loss, args.limit, args.verbose)
               for c in args.cases.split(",") for d in args.drivers.split(",")]
    load1 = os.getloadavg()
    out = [f"setups under {args.loss} % random loss in each NAT (natA, natB forward chains; alice-carol one lossy "
           "hop, alice-bob two); mediated: both mediation SAs up, 'up' on alice -> CHILD_SA installed; "
           "direct: alice -> carol IKE_SA + CHILD_SA",
           f"{time.strftime('%Y-%m-%d %H:%M')}  load average {load0[0]:.2f} before, {load1[0]:.2f} after",
           *machine(args.commit),
           f"runs per cell {args.runs}, per-run limit {args.limit:g} s; 'ok' = succeeded within {args.target:g} s",
           "",
           f"{'case':<9} {'driver':<7} {'ok':>5} {'median':>9} {'min-max':>17} {'failed':>6} {'dropped':>8}"]
    out += [r.row(args.target) for r in results]
    for r in results:
        if r.times:
            out.append(f"  {r.case} {r.driver} times: {' '.join(f'{t:.2f}' for t in sorted(r.times))}")
    fails = [f"  {r.case} {r.driver} {f}" for r in results for f in r.failures]
    if fails:
        out += ["", "failures:", *fails[:50]]
    out.append(f"total {time.monotonic() - started:.1f} s")
    text = "\n".join(out)
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
