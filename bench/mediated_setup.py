#!/usr/bin/env python3
"""Time from "initiate the mediated connection" on alice to its CHILD_SA installed (charon: docs/nat-lab.md §9).

Topology: :func:`scenarios.lab.nat_lab` (alice behind natA, bob behind natB, both endpoint-independent
NATs with the WAN drop rule, carol = mediation server). Both mediation SAs are up before the clock starts.
Per run: ``initiate_and_wait()`` on the driver, then ``reset()`` (mediated SAs deleted, punched NAT
mappings forgotten). Conditions: ``bridge`` (plain Linux bridge) or a one-way delay in ms through the
userspace TAP hub (compare hub runs with hub runs: the hub itself costs a little).

Drivers implement :class:`scenarios.lab.medsetup.MediatedSetupDriver`; ``charon`` is three strongSwan
charons, ``ours`` is our mediation_server + two mediation_clients (:class:`OursMediation`).

    bench/mediated_setup.py                       # charon and ours, conditions 0 and 20 ms, 10 runs each
    bench/mediated_setup.py --runs 20 --conditions bridge,0,20,50
    bench/mediated_setup.py --hang-runs 200 --out bench/results/mediated_setup.txt
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
if _VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])  # the project's venv has pyroute2, vici
sys.path.insert(0, str(ROOT))

from scenarios.lab import Lab, cleanup_orphans, nat_lab  # noqa: E402
from scenarios.lab.iked import IkedError  # noqa: E402
from scenarios.lab.mediation import OurMediation  # noqa: E402
from scenarios.lab.medsetup import CharonMediation, MediatedSetupDriver, forget_direct_mappings  # noqa: E402


class OursMediation:
    """Our mediation_server on carol, our mediation_client on alice and bob (the medsrv-psk setup).

    Measured externally: from writing ``{"cmd": "up", "conn": "bob"}`` to alice's control socket until
    alice lists the mediated IKE_SA with an INSTALLED CHILD_SA. The ``up`` reply is sent once the mediated
    IKE_SA is established; the CHILD_SA comes in the same IKE_AUTH response, and its events (data-plane
    install included) are handled in the same flush before the reply is written, so one ``list`` right
    after the reply normally confirms it; if not, ``list`` is polled every 2 ms and the clock runs on.
    """

    name = "ours"

    connect_rate = 1000.0  # server's per-peer ME_CONNECT rate limit (default 5/s, burst 10; see --connect-rate)

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.med = OurMediation(lab)
        self.polled = 0  # runs where the CHILD_SA was not yet listed when `up` returned

    def start(self) -> None:
        self.med.start_server(extra=f"connect_rate = {self.connect_rate:g}\nconnect_burst = 1000")
        self.med.start_client("bob")
        self.med.start_client("alice")

    def bring_up_mediation(self) -> None:
        self.med.wait_registered("alice", "bob", timeout=15.0)

    @staticmethod
    def _installed(sas: list[dict[str, Any]], name: str) -> bool:
        return any(s["name"] == name and s["state"] == "ESTABLISHED"
                   and any(c["state"] == "INSTALLED" for c in s["child-sas"]) for s in sas)

    def initiate_and_wait(self, timeout: float) -> float:
        alice = self.med.clients["alice"]
        t0 = time.monotonic()
        r = alice.ctl({"cmd": "up", "conn": "bob", "timeout": timeout}, timeout=timeout + 2)
        if not r.get("ok"):
            raise IkedError(f"up bob: {r.get('error')}")
        deadline = t0 + timeout
        first = True
        while not self._installed(alice.list_sas(), "bob"):
            if first:
                self.polled += 1
                first = False
            if time.monotonic() > deadline:
                raise IkedError("mediated CHILD_SA not installed on alice")
            time.sleep(0.002)
        return time.monotonic() - t0

    def reset(self, timeout: float = 10.0) -> None:
        """``down`` the mediated IKE_SA on alice (DELETE reaches bob), wait until both forgot it."""
        alice, bob = self.med.clients["alice"], self.med.clients["bob"]
        for sa in alice.list_sas():
            if sa["name"] == "bob":
                alice.ctl({"cmd": "down", "ike": sa["uniqueid"]})
        deadline = time.monotonic() + timeout
        forced = False
        while any(s["name"] == "bob" for s in alice.list_sas()) or any(s["name"] == "alice" for s in bob.list_sas()):
            if time.monotonic() > deadline:
                if forced:
                    raise IkedError("mediated SAs not gone after down on both peers")
                for sa in bob.list_sas():  # DELETE lost: remove bob's side directly
                    if sa["name"] == "alice":
                        bob.ctl({"cmd": "down", "ike": sa["uniqueid"]})
                forced, deadline = True, time.monotonic() + timeout
            time.sleep(0.005)
        forget_direct_mappings(self.lab)

    def stop(self) -> None:
        self.med.stop()


DRIVERS: dict[str, Callable[[Lab], MediatedSetupDriver]] = {
    "charon": CharonMediation,
    "ours": OursMediation,
}


@dataclass
class Result:
    driver: str
    condition: str
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    hangs: int = 0      # runs that did not finish within the per-run limit
    note: str = ""

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times) * 1000 if self.times else None

    def row(self) -> str:
        if not self.times:
            return f"{self.driver:<10} {self.condition:<8} {0:>4} {'-':>9} {'-':>9} {'-':>9} {len(self.failures):>6}"
        ms = [t * 1000 for t in self.times]
        return (f"{self.driver:<10} {self.condition:<8} {len(ms):>4} {statistics.median(ms):>9.1f} "
                f"{min(ms):>9.1f} {max(ms):>9.1f} {len(self.failures):>6}")


HEADER = f"{'driver':<10} {'cond':<8} {'runs':>4} {'median':>9} {'min':>9} {'max':>9} {'failed':>6}   (ms)"
TARGETS = {"0ms": 0.10, "20ms": 0.25}  # ours / charon at most this (the project's goal for a mediated setup)


def measure(driver_name: str, condition: str, runs: int, timeout: float, verbose: bool) -> Result:
    delay = None if condition == "bridge" else float(condition)
    result = Result(driver_name, "bridge" if delay is None else f"{delay:g}ms")
    lab = nat_lab(delay_ms=delay)
    driver = DRIVERS[driver_name](lab)
    try:
        driver.start()
        driver.bring_up_mediation()
        for i in range(runs):
            t0 = time.monotonic()
            try:
                t = driver.initiate_and_wait(timeout)
                result.times.append(t)
                if verbose:
                    print(f"  {driver_name} {result.condition} run {i + 1}: {t * 1000:.1f} ms", flush=True)
            except Exception as e:  # noqa: BLE001 - a hang/failure is a data point, not the end
                if time.monotonic() - t0 >= timeout - 0.05:
                    result.hangs += 1
                result.failures.append(f"run {i + 1}: {str(e).splitlines()[0]}")
                if verbose:
                    print(f"  {driver_name} {result.condition} run {i + 1}: FAILED {result.failures[-1]}")
            driver.reset()
        polled = getattr(driver, "polled", None)
        if polled is not None:
            result.note = f"{polled} of {runs} runs needed polling after the up reply for the CHILD_SA"
    finally:
        driver.stop()
        lab.teardown()
    return result


def comparison(results: list[Result]) -> list[str]:
    """ours vs charon per condition with the ratio of medians and the issue's target."""
    by = {(r.driver, r.condition): r for r in results}
    conds = list(dict.fromkeys(r.condition for r in results))
    lines = [f"{'cond':<8} {'charon':>9} {'ours':>9} {'ratio':>7} {'target':>7}   (median ms)"]
    for c in conds:
        ch, ou = by.get(("charon", c)), by.get(("ours", c))
        if ch is None or ou is None or ch.median_ms is None or ou.median_ms is None:
            continue
        ratio = ou.median_ms / ch.median_ms
        tgt = TARGETS.get(c)
        verdict = "" if tgt is None else f"<= {tgt:.2f}x {'met' if ratio <= tgt else 'MISSED'}"
        lines.append(f"{c:<8} {ch.median_ms:>9.1f} {ou.median_ms:>9.1f} {ratio:>6.3f}x {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--conditions", default="0,20",
                    help="comma list: 'bridge' or one-way delay in ms through the TAP hub (default 0,20)")
    ap.add_argument("--drivers", default="charon,ours", help=f"comma list of {', '.join(DRIVERS)}")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-run limit; longer counts as a hang")
    ap.add_argument("--hang-runs", type=int, default=0,
                    help="also run ours this many times at 0 ms (limit --hang-timeout) and count hangs/failures")
    ap.add_argument("--hang-timeout", type=float, default=5.0)
    ap.add_argument("--connect-rate", type=float, default=1000.0,
                    help="ours: the server's per-peer ME_CONNECT/s limit; back-to-back runs make ~10/s, over the "
                         "default 5/s (burst 10), and a refused ME_CONNECT looks like 'peer offline' to the client")
    ap.add_argument("--out", help="also write the report to this file (e.g. bench/results/mediated_setup.txt)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    cleanup_orphans()
    OursMediation.connect_rate = args.connect_rate
    results: list[Result] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    if args.runs > 0:
        for cond in args.conditions.split(","):
            for drv in args.drivers.split(","):
                results.append(measure(drv.strip(), cond.strip(), args.runs, args.timeout, args.verbose))
    hang: Result | None = None
    if args.hang_runs > 0:
        hang = measure("ours", "0", args.hang_runs, args.hang_timeout, args.verbose)
    load1 = os.getloadavg()
    out = ["mediated setup: initiate on alice -> CHILD_SA installed (both mediation SAs already up); "
           "nat_lab EIM NATs + WAN drop, delay via the TAP hub",
           f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores, load average {load0[0]:.2f} before, "
           f"{load1[0]:.2f} after (other jobs share the machine)",
           f"runs per cell {args.runs}, per-run limit {args.timeout:g} s; ours: server connect_rate "
           f"{args.connect_rate:g}/s per peer", "", HEADER]
    out += [r.row() for r in results]
    out += [f"  {r.driver} {r.condition}: {r.note}" for r in results if r.note]
    cmp_lines = comparison(results)
    if len(cmp_lines) > 1:
        out += ["", *cmp_lines]
    if hang is not None:
        out += ["", f"hang check: ours at 0 ms, {args.hang_runs} runs, limit {args.hang_timeout:g} s per run: "
                    f"{hang.hangs} hangs, {len(hang.failures)} failures (hangs included), "
                    f"{len(hang.times)} completed",
                hang.row()]
        if hang.note:
            out.append(f"  {hang.note}")
    fails = [f"  {r.driver} {r.condition} {f}" for r in [*results, *([hang] if hang else [])] for f in r.failures]
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
