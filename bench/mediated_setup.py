#!/usr/bin/env python3
"""Time from "initiate the mediated connection" on alice to its CHILD_SA installed (issue 4, netlab.md §11).

Topology: :func:`scenarios.lab.nat_lab` (alice behind natA, bob behind natB, both endpoint-independent
NATs with the WAN drop rule, carol = mediation server). Both mediation SAs are up before the clock starts.
Per run: ``initiate_and_wait()`` on the driver, then ``reset()`` (mediated SAs deleted, punched NAT
mappings forgotten). Conditions: ``bridge`` (plain Linux bridge) or a one-way delay in ms through the
userspace TAP hub (compare hub runs with hub runs: the hub itself costs a little).

Drivers implement :class:`scenarios.lab.medsetup.MediatedSetupDriver`; ``charon`` is three strongSwan
charons. Register more in ``DRIVERS`` (e.g. our mediation server and clients).

    bench/mediated_setup.py                       # charon, conditions 0 and 20 ms, 10 runs each
    bench/mediated_setup.py --runs 20 --conditions bridge,0,20,50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
if _VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])  # the project's venv has pyroute2, vici
sys.path.insert(0, str(ROOT))

from scenarios.lab import Lab, cleanup_orphans, nat_lab  # noqa: E402
from scenarios.lab.medsetup import CharonMediation, MediatedSetupDriver  # noqa: E402

DRIVERS: dict[str, Callable[[Lab], MediatedSetupDriver]] = {
    "charon": CharonMediation,
}


@dataclass
class Result:
    driver: str
    condition: str
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        if not self.times:
            return f"{self.driver:<10} {self.condition:<8} {0:>4} {'-':>9} {'-':>9} {'-':>9} {len(self.failures):>6}"
        ms = [t * 1000 for t in self.times]
        return (f"{self.driver:<10} {self.condition:<8} {len(ms):>4} {statistics.median(ms):>9.1f} "
                f"{min(ms):>9.1f} {max(ms):>9.1f} {len(self.failures):>6}")


HEADER = f"{'driver':<10} {'cond':<8} {'runs':>4} {'median':>9} {'min':>9} {'max':>9} {'failed':>6}   (ms)"


def measure(driver_name: str, condition: str, runs: int, timeout: float, verbose: bool) -> Result:
    delay = None if condition == "bridge" else float(condition)
    result = Result(driver_name, "bridge" if delay is None else f"{delay:g}ms")
    lab = nat_lab(delay_ms=delay)
    driver = DRIVERS[driver_name](lab)
    try:
        driver.start()
        driver.bring_up_mediation()
        for i in range(runs):
            try:
                t = driver.initiate_and_wait(timeout)
                result.times.append(t)
                if verbose:
                    print(f"  {driver_name} {result.condition} run {i + 1}: {t * 1000:.1f} ms", flush=True)
            except Exception as e:  # noqa: BLE001 - a hang/failure is a data point, not the end
                result.failures.append(f"run {i + 1}: {str(e).splitlines()[0]}")
                if verbose:
                    print(f"  {driver_name} {result.condition} run {i + 1}: FAILED {result.failures[-1]}")
            driver.reset()
    finally:
        driver.stop()
        lab.teardown()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--conditions", default="0,20",
                    help="comma list: 'bridge' or one-way delay in ms through the TAP hub (default 0,20)")
    ap.add_argument("--drivers", default="charon", help=f"comma list of {', '.join(DRIVERS)}")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-run limit; longer counts as a hang")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    cleanup_orphans()
    results = []
    started = time.monotonic()
    for cond in args.conditions.split(","):
        for drv in args.drivers.split(","):
            results.append(measure(drv.strip(), cond.strip(), args.runs, args.timeout, args.verbose))
    print("\nmediated setup: initiate on alice -> CHILD_SA installed (both mediation SAs already up)")
    print(HEADER)
    for r in results:
        print(r.row())
    for r in results:
        for f in r.failures:
            print(f"  {r.driver} {r.condition} {f}")
    print(f"total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
