#!/usr/bin/env python3
"""Time from "initiate the mediated connection" on alice to its CHILD_SA installed, ours and charon.

Topology: :func:`scenarios.lab.nat_lab` (alice behind natA, bob behind natB, endpoint-independent NATs with
the WAN drop rule, carol = mediation server), the internet segment through the userspace delay hub. Both
mediation SAs are up (ours: and their NAT discovery done) before the clock starts. A setup ends when the control call
that started it returns (ours: the ``up`` reply, sent after the CHILD_SA is installed; charon: its blocking vici
``initiate``, which returns once the CHILD_SA is INSTALLED); a ``list`` outside the clock confirms it on each side.
Conditions (each in a lab of its own):

- ``0``, ``20``: both peers behind NAT, 0 or 20 ms one-way delay per hop through the hub;
- ``public``: bob on a routed public address (natB only forwards), 0 ms: alice has one candidate pair; the
  CHILD_SA's traffic selectors are tunnel-inner /32s on ``lo`` (kernel-libipsec cannot route a CHILD_SA
  whose selectors are the IKE peers' own addresses, which they would be here);
- ``extra``: as ``0``, plus two tunnel-inner /32 addresses on ``lo`` of each peer (addresses the daemons
  do not listen on, as a host with VPN or tunnel addresses has them);
- ``relay``: as ``0``, ours only: our clients with the relay candidate (the default) against ``relay = false``
  (the direct pair wins here; the relay must add no time).

Per condition, rounds rotate the sides' order (ours, charon / charon, ours; with ``--before``: ours,
ours-before, charon / ours-before, charon, ours / ...; only one of them runs at a time: all use port 4500),
each side starting its daemons, doing ``WARMUP`` unmeasured setup (the first setup of a block is slower on
every side) and then ``--runs`` measured setups per round. Then the hang check:
``--hang-runs`` setups of each side at 0 ms, limit ``--hang-timeout`` s each, interleaved in blocks.
Our mediation server runs with its defaults (connect_rate 5/s per peer, burst 10); a run starts at most
every ``PACE`` s so that no side is measured against a rate limit (users do not start a connection
several times a second).

    bench/mediated_setup.py --out bench/results/mediated_setup.txt       # default rounds
    bench/mediated_setup.py --quick                                      # smoke run
    bench/mediated_setup.py --rounds 2 --runs 3 --conditions 0,public --hang-runs 20
    bench/mediated_setup.py --before /tmp/old-tree    # also our daemons from another checkout, interleaved
    bench/mediated_setup.py --trace 20                # one setup of ours, the three daemons' steps merged by time
"""

from __future__ import annotations

import argparse
import re
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

from mediated_sides import CharonBlocking, OursMediation  # noqa: E402
from mediated_trace import cpu_ns  # noqa: E402, F401 - the tests read it here

from scenarios.lab import Lab, cleanup_orphans, nat_lab  # noqa: E402
from scenarios.lab.mediation import LAN  # noqa: E402
from scenarios.lab.medsetup import MediatedSetupDriver  # noqa: E402
from scenarios.lab.topologies import CAROL  # noqa: E402

WARMUP = 1  # unmeasured setups at the start of each side's block in a round
PACE = 0.25  # seconds from one run's start to the next at least (below the server's 5 ME_CONNECT/s)
WAIT_TO_FINISH_MS = 1000.0  # strongSwan connect_manager.c: #define ME_WAIT_TO_FINISH 1000 /* ms */


SIDES = ["ours", "charon"]
RELAY_SIDES = ["ours", "ours-norelay"]  # condition relay: our client with and without the relay candidate
BEFORE: str | None = None  # --before: the checkout whose daemons run as side "ours-before"
INNER = {"alice": "10.10.1.1", "bob": "10.10.2.1"}  # tunnel-inner addresses (condition public)


def make_driver(name: str, lab: Lab, cond: Condition) -> MediatedSetupDriver:
    ts = {**LAN, **INNER} if cond.public_bob else None
    if name == "charon":
        return CharonBlocking(lab, ts_addrs=ts)
    if name == "ours-norelay":
        return OursMediation(lab, ts, client="relay = false")
    return OursMediation(lab, ts, BEFORE if name == "ours-before" else None)


@dataclass(frozen=True)
class Condition:
    key: str
    delay_ms: float
    public_bob: bool = False
    extra_addresses: bool = False
    relay_ab: bool = False  # ours with the relay candidate (the default) against ours without it

    @property
    def result_key(self) -> str:
        return f"{self.delay_ms:g}ms" if self.key in ("0", "20") else self.key

    @property
    def label(self) -> str:
        if self.relay_ab:
            return f"both behind NAT, {self.delay_ms:g} ms one-way per hop, our relay candidate on and off"
        if self.public_bob:
            return (f"bob on a public address (one candidate pair), {self.delay_ms:g} ms, selectors on "
                    "tunnel /32s on lo")
        extra = ", two tunnel /32s on lo of each peer" if self.extra_addresses else ""
        return f"both behind NAT, {self.delay_ms:g} ms one-way per hop{extra}"


CONDITIONS = {
    "0": Condition("0", 0.0),
    "20": Condition("20", 20.0),
    "public": Condition("public", 0.0, public_bob=True),
    "extra": Condition("extra", 0.0, extra_addresses=True),
    "relay": Condition("relay", 0.0, relay_ab=True),
}


def build_lab(cond: Condition) -> Lab:
    lab = nat_lab(delay_ms=cond.delay_ms)
    try:
        if cond.public_bob:
            # natB forwards without translating; bob's 10.2.0.2 is routed on the internet segment
            lab.run("natB", ["nft", "delete", "table", "ip", "nat"])
            lab.route("natA", "10.2.0.0/24", "203.0.113.2")
            lab.route("carol", "10.2.0.0/24", "203.0.113.2")
            for host, ip in INNER.items():
                lab.addr(host, "lo", f"{ip}/32")
            # forgotten between setups as the NATs' public addresses are in the other conditions
            # (forget_direct_mappings): else natA keeps the last setup's path to bob open, and bob's first
            # checks reach alice before her own have opened it, which no first setup sees
            lab.info.setdefault("public", {})["bob (routed)"] = "10.2.0.2"
        if cond.extra_addresses:
            for host, net in (("alice", "10.10.1"), ("bob", "10.10.2")):
                for i in (1, 2):
                    lab.addr(host, "lo", f"{net}.{i}/32")
    except BaseException:
        lab.close(passed=False)
        raise
    return lab


def hub_rtt_ms(lab: Lab) -> float | None:
    """Average ping round trip alice -> carol (through natA and the hub: one hop each way)."""
    out = lab.ping("alice", CAROL, count=5, interval=0.2)[2]
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else None


@dataclass
class Result:
    driver: str
    condition: str
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    hangs: int = 0  # runs that did not finish within the per-run limit
    polled: int = 0  # runs where the CHILD_SA was not yet listed when the initiating call returned
    relayed: int = 0  # ours: runs whose tunnel went through the relay
    cpu: list[float] = field(default_factory=list)  # per measured run: the three daemons' CPU time, ms

    @property
    def note(self) -> str:
        return "; ".join(([f"{self.polled} runs needed polling after the initiating call returned"] if self.polled else [])
                         + ([f"{self.relayed} runs went through the relay"] if self.relayed else []))

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


def _runs(driver: MediatedSetupDriver, result: Result, runs: int, timeout: float, verbose: bool,
          restart: Callable[[], MediatedSetupDriver] | None = None, warmup: int = 0) -> MediatedSetupDriver:
    """`warmup` unmeasured setups, then `runs` measured ones, one started every PACE s at most; a charon
    that failed one is restarted (it keeps the failed mediation queued and never sends another
    ME_CONNECT), ours recovers by itself. The warm-up absorbs the first setup of a freshly started block,
    which is slower on every side (cold caches and code paths after another side's daemons ran); a
    failed warm-up is not counted (the next setups show whether the side fails)."""
    for i in range(warmup + runs):
        measured = i >= warmup
        t0 = time.monotonic()
        try:
            t = driver.initiate_and_wait(timeout)
            if measured:
                result.times.append(t)
                result.cpu.append(getattr(driver, "cpu", 0) / 1e6)
            if verbose:
                print(f"  {result.driver} {result.condition}: {t * 1000:.1f} ms{'' if measured else ' (warm-up)'}",
                      flush=True)
        except Exception as e:  # noqa: BLE001 - a hang/failure is a data point, not the end
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if measured:
                if time.monotonic() - t0 >= timeout - 0.05:
                    result.hangs += 1
                result.failures.append(why)
            if verbose:
                print(f"  {result.driver} {result.condition}: FAILED{'' if measured else ' (warm-up)'} {why}",
                      flush=True)
            if restart is not None:
                driver.stop()
                driver = restart()
                continue
        try:
            driver.reset()
        except Exception as e:  # noqa: BLE001
            result.failures.append(f"reset: {str(e).splitlines()[0]}")
        time.sleep(max(0.0, t0 + PACE - time.monotonic()))
    return driver


def _started(name: str, lab: Lab, cond: Condition) -> MediatedSetupDriver:
    d = make_driver(name, lab, cond)
    d.start()
    d.bring_up_mediation()
    return d


def measure(driver_name: str, condition: str, runs: int, timeout: float, verbose: bool) -> Result:
    """One side alone in a lab of its own (`condition` a key of CONDITIONS or a delay in ms)."""
    cond = CONDITIONS.get(condition) or Condition(condition, float(condition))
    result = Result(driver_name, cond.result_key)
    driver: MediatedSetupDriver | None = None
    with build_lab(cond) as lab:
        try:
            driver = _started(driver_name, lab, cond)
            restart = (lambda: _started(driver_name, lab, cond)) if driver_name == "charon" else None
            driver = _runs(driver, result, runs, timeout, verbose, restart)
        finally:
            if driver is not None:
                driver.stop()
    return result


def rotated(rounds: int, sides: list[str]) -> list[tuple[int, str]]:
    """(round, side): every round runs each side once, the order rotated by one per round (A B C, B C A,
    C A B, ...), so that with three sides each one follows each other side equally often and a drift in
    the machine's load falls on all of them alike."""
    return [(r, sides[(r + i) % len(sides)]) for r in range(rounds) for i in range(len(sides))]


def interleaved(cond: Condition, rounds: int, runs: int, timeout: float, verbose: bool) -> tuple[dict[str, Result], float | None]:
    """Both sides in one lab, alternating per round; returns the results and the hub's ping RTT."""
    sides = ([*RELAY_SIDES, *(["ours-before"] if BEFORE else [])]) if cond.relay_ab else SIDES
    results = {d: Result(d, cond.result_key) for d in sides}
    with build_lab(cond) as lab:
        rtt = hub_rtt_ms(lab)
        for _, side in rotated(rounds, sides):
            driver = _started(side, lab, cond)
            restart = (lambda s=side: _started(s, lab, cond)) if side == "charon" else None
            try:
                driver = _runs(driver, results[side], runs, timeout, verbose, restart, warmup=WARMUP)
            finally:
                driver.stop()
            if isinstance(driver, OursMediation):
                results[side].relayed += driver.relayed
                driver.relayed = 0
            if isinstance(driver, (OursMediation, CharonBlocking)):
                results[side].polled += driver.polled
                driver.polled = 0
    return results, rtt


def comparison(results: list[Result]) -> list[str]:
    """ours vs charon per condition with the ratio of medians."""
    by = {(r.driver, r.condition): r for r in results}
    conds = list(dict.fromkeys(r.condition for r in results))
    lines = [f"{'cond':<8} {'charon':>9} {'ours':>9} {'ratio':>7}   (median ms)"]
    for c in conds:
        ch, ou = by.get(("charon", c)), by.get(("ours", c))
        if ch is None or ou is None or ch.median_ms is None or ou.median_ms is None:
            continue
        lines.append(f"{c:<8} {ch.median_ms:>9.1f} {ou.median_ms:>9.1f} {ou.median_ms / ch.median_ms:>6.3f}x")
    return lines


def _fmt(r: Result) -> str:
    ms = [t * 1000 for t in r.times]
    return f"{statistics.median(ms):.1f} ms ({min(ms):.1f}-{max(ms):.1f}, n={len(ms)})"


def _fmt_cpu(r: Result) -> str:
    return f"{statistics.median(r.cpu):.2f} ms ({min(r.cpu):.2f}-{max(r.cpu):.2f}, n={len(r.cpu)})" if r.cpu else "-"


def _ms(r: Result, minus: float = 0.0) -> dict[str, Any] | None:
    return results_io.sample([t * 1000 - minus for t in r.times], "ms", 1)


COMMON = ["both sides end at the reply of the control call that started the setup: ours the `up` reply (sent "
          "after the CHILD_SA is installed), charon its blocking vici initiate (returns when the CHILD_SA is "
          "INSTALLED; loglevel -1, no log lines streamed); each confirmed by one list outside the clock",
          "ours: userspace ESP over TUN; charon: kernel-libipsec (this kernel has no ESP)",
          "ours: the mediation server's relay extension adds one RELAYED candidate (lowest priority, checked "
          "by alice only when no direct pair succeeded half a mediation round trip after the checks started); "
          "charon's server relays no data"]


def relay_figures(cond: Condition, res: dict[str, Result]) -> list[dict[str, Any]]:
    """Condition relay: ours with the relay candidate (users' default) and without, interleaved."""
    on, off = res["ours"], res["ours-norelay"]
    same = ["the same lab, rounds interleaved; the direct pair wins in this lab (endpoint-independent NATs)"]
    label = f"`up` to mediated CHILD_SA, both behind NAT, {cond.delay_ms:g} ms one-way per hop"
    return [results_io.figure(f"up_to_child_{cond.result_key}_relay_on", f"{label}, our relay candidate on (default)",
                              _ms(on), None, readme=False, differences=same),
            results_io.figure(f"up_to_child_{cond.result_key}_relay_off", f"{label}, relay = false on both clients",
                              _ms(off), None, readme=False, differences=same)]


def cpu_figure(key: str, cond: Condition, ours: Result, charon: Result) -> dict[str, Any]:
    """The daemons' CPU time per setup: what the setup costs the machine, and what it needs of the CPUs the
    daemons share with the lab's hub, whatever else runs on the machine."""
    return results_io.figure(
        f"{key}_cpu", f"CPU time of alice's, bob's and carol's daemons per setup (from the initiating call to its "
        f"return), {cond.label}", results_io.sample(ours.cpu, "ms", 2), results_io.sample(charon.cpu, "ms", 2),
        readme=False, differences=[
            "each process's threads' time on a CPU (/proc/PID/task/TID/schedstat), read before the initiating "
            "call and at its return: ours three Python processes (their data-plane threads included), charon "
            "three charons (all their threads, kernel-libipsec's included)"])


def figures_for(cond: Condition, res: dict[str, Result], rtt: float | None) -> list[dict[str, Any]]:
    if cond.relay_ab:
        return relay_figures(cond, res)
    ours, charon = res["ours"], res["charon"]
    diffs = list(COMMON)
    if rtt is not None and cond.delay_ms > 0:
        diffs.append(f"measured ping RTT alice-carol through the hub {rtt:.1f} ms (nominal {2 * cond.delay_ms:g}); "
                     f"the protocol's floor is about 5 RTT = {5 * rtt:.0f} ms")
    key = f"up_to_child_{cond.key}" + ("ms" if cond.key in ("0", "20") else "")
    label = f"`up` to mediated CHILD_SA, {cond.label}"
    figs: list[dict[str, Any]] = []
    if cond.public_bob:
        diffs.append("one candidate pair on alice: charon finishes its checks at the first success (no "
                     "ME_WAIT_TO_FINISH)")
        figs.append(results_io.figure(key, label, _ms(ours), _ms(charon), differences=diffs))
        return [*figs, cpu_figure(key, cond, ours, charon)]
    waits = [f"charon waits {WAIT_TO_FINISH_MS:.0f} ms (ME_WAIT_TO_FINISH) after its first successful check, "
             "because the host-host pair stays pending; a compile-time constant in connect_manager.c, "
             "no strongswan.conf setting changes it: see the next line for charon without it"]
    figs.append(results_io.figure(key, label, _ms(ours), _ms(charon), differences=waits + diffs,
                                  readme=not cond.extra_addresses))
    figs.append(results_io.figure(
        key + "_charon_nowait", f"{label}: charon's time minus its fixed {WAIT_TO_FINISH_MS:.0f} ms wait",
        _ms(ours), _ms(charon, WAIT_TO_FINISH_MS),
        differences=[f"charon's measured times minus {WAIT_TO_FINISH_MS:.0f} ms (ME_WAIT_TO_FINISH cannot be "
                     "configured, so charon cannot be run without it); not a measurement of a charon build "
                     "without the wait", *diffs], readme=cond.key in ("0", "20")))
    return [*figs, cpu_figure(key, cond, ours, charon)]


def trace(cond: Condition) -> list[str]:
    """Where the time of one setup of ours goes: the daemons' debug lines (all namespaces share the clock)
    from the `up` to the CHILD_SA, step lines only, merged by timestamp with the bench's own marks, in ms
    since the `up` was written."""
    import mediated_trace as mtr

    with build_lab(cond) as lab:
        site = mtr.site_dir(lab.dir)
        driver = OursMediation(lab, {**LAN, **INNER} if cond.public_bob else None, BEFORE, path_first=site)
        driver.start()
        try:
            driver.bring_up_mediation()
            daemons = {"carol": driver.med.server, **driver.med.clients}
            for d in daemons.values():
                assert d is not None
                d.ctl({"cmd": "loglevel", "level": "debug"})
            driver.initiate_and_wait(10.0)  # a first setup warms every path
            driver.reset()
            marks = {n: len(d.log_text()) for n, d in daemons.items() if d is not None}
            took = driver.initiate_and_wait(10.0)
            t0 = driver.marks["up sent"]
            lines: list[tuple[float, str]] = [(t, f"{(t - t0) * 1000:8.2f} ms  {'bench':<6} {what}")
                                              for what, t in driver.marks.items()]
            for n, d in daemons.items():
                assert d is not None
                lines += mtr.step_lines(n, d.log_text()[marks[n]:], t0)
            return [f"one setup of ours, {cond.label}: {took * 1000:.1f} ms from `up` to the CHILD_SA listed",
                    *(text for _, text in sorted(lines, key=lambda x: x[0]))]
        finally:
            driver.stop()


def timeline(cond: Condition, rounds: int, runs: int, verbose: bool) -> list[str]:
    """Per-step times of every side from captures on alice, carol and bob (bench/mediated_timeline.py),
    rounds rotating the sides as in the figures, each side's block warmed up, then ``runs`` captured."""
    import mediated_timeline as mt

    def started(side: str) -> MediatedSetupDriver:
        driver = _started(side, lab, cond)
        _runs(driver, Result(side, cond.result_key), WARMUP, 10.0, False)
        return driver

    with build_lab(cond) as lab:
        return [f"per-step times from captures, {cond.label}; {rounds} rounds x {runs} setups per side "
                "(after 1 warm-up each); each step from one event to the next on the critical path",
                *mt.collect(lab, {"alice": LAN["alice"], "carol": CAROL, "bob": LAN["bob"]},
                            rotated(rounds, SIDES), started, runs, PACE, verbose)]


def hang_check(runs: int, timeout: float, verbose: bool) -> dict[str, Result]:
    """Both sides at 0 ms, `runs` setups each, in four alternating blocks; counts runs over `timeout`."""
    res = {d: Result(d, "0ms") for d in ("ours", "charon")}
    cond = CONDITIONS["0"]
    with build_lab(cond) as lab:
        blocks = 2
        per = [runs // blocks + (1 if i < runs % blocks else 0) for i in range(blocks)]
        for r, side in results_io.interleave(blocks, ["ours", "charon"]):
            driver = _started(side, lab, cond)
            restart = (lambda s=side: _started(s, lab, cond)) if side == "charon" else None
            try:
                driver = _runs(driver, res[side], per[r], timeout, verbose, restart)
            finally:
                driver.stop()
    return res


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    results_io.add_args(ap, rounds=4)
    ap.add_argument("--runs", type=int, default=None, help="setups per side and round (default 5, 2 with --quick)")
    ap.add_argument("--conditions", default="0,20,public,extra,relay", help=f"comma list of {', '.join(CONDITIONS)}")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-run limit; longer counts as a hang")
    ap.add_argument("--hang-runs", type=int, default=None,
                    help="setups per side at 0 ms for the hang count (default 100, 4 with --quick)")
    ap.add_argument("--hang-timeout", type=float, default=5.0)
    ap.add_argument("--before", help="also run our daemons from this checkout (side ours-before), interleaved")
    ap.add_argument("--trace", metavar="COND", help="print where one setup of ours spends its time, then exit")
    ap.add_argument("--timeline", metavar="COND", help="per-step times from packet captures on alice, carol and "
                    "bob for every side (--rounds, --runs, --before), then exit")
    ap.add_argument("--note", action="append", default=[], help="a note for the report (e.g. which checkouts ran)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def run_conditions(conds: list[str], rounds: int, runs: int, args: argparse.Namespace) -> tuple[
        list[dict[str, Any]], list[Result], list[str], list[str], list[str]]:
    """Every condition interleaved: its figures, result rows, hub RTTs, before/after and relay notes."""
    figures: list[dict[str, Any]] = []
    rows: list[Result] = []
    rtts: list[str] = []
    before_after: list[str] = []
    relay_notes: list[str] = []
    for key in conds:
        cond = CONDITIONS[key.strip()]
        res, rtt = interleaved(cond, rounds, runs, args.timeout, args.verbose)
        rows += list(res.values())
        figures += figures_for(cond, res, rtt)
        if rtt is not None:
            rtts.append(f"{cond.key}: {rtt:.2f} ms")
        if "ours-before" in res and res["ours-before"].times and res["ours"].times:
            b, a = res["ours-before"], res["ours"]
            before_after.append(f"{cond.key}: ours before {_fmt(b)}, after {_fmt(a)}; the three daemons' CPU per "
                                f"setup before {_fmt_cpu(b)}, after {_fmt_cpu(a)}")
        if cond.relay_ab and res["ours"].times and res["ours-norelay"].times:
            on, off = res["ours"], res["ours-norelay"]
            relay_notes.append(f"relay candidate on vs off at {cond.delay_ms:g} ms (interleaved, same lab): on "
                               f"{_fmt(on)}, off {_fmt(off)}; median on - off "
                               f"{(on.median_ms or 0) - (off.median_ms or 0):+.1f} ms")
    return figures, rows, rtts, before_after, relay_notes


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    global BEFORE
    if args.before:
        BEFORE = str(Path(args.before).resolve())
        SIDES[:] = ["ours", "ours-before", "charon"]
    if args.trace:  # with --before: a setup of the daemons of that checkout
        cleanup_orphans()
        print("\n".join(trace(CONDITIONS[args.trace])))
        return 0
    rounds = results_io.rounds_of(args)
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    if args.timeline:
        cleanup_orphans()
        print("\n".join(timeline(CONDITIONS[args.timeline], rounds, runs, args.verbose)))
        return 0
    hang_runs = args.hang_runs if args.hang_runs is not None else (4 if args.quick else 100)
    conds = ["0"] if args.quick and args.conditions == ap.get_default("conditions") else args.conditions.split(",")
    header = results_io.start_header(argv)
    cleanup_orphans()
    figures, rows, rtts, before_after, relay_notes = run_conditions(conds, rounds, runs, args)
    hang = hang_check(hang_runs, args.hang_timeout, args.verbose) if hang_runs > 0 else None
    if hang is not None:
        figures.append(results_io.figure(
            "hangs", f"hangs (no CHILD_SA within {args.hang_timeout:g} s) in {hang_runs} mediated setups at 0 ms",
            results_io.count(hang["ours"].hangs, hang_runs, "hangs"),
            results_io.count(hang["charon"].hangs, hang_runs, "hangs"), better="lower",
            differences=["a charon that failed a run is restarted before the next (it never retries a failed "
                         "mediation by itself); ours is left to recover"]))
        figures.append(results_io.figure(
            "failures", f"failed setups (hangs included) in {hang_runs} mediated setups at 0 ms",
            results_io.count(len(hang["ours"].failures), hang_runs, "failed"),
            results_io.count(len(hang["charon"].failures), hang_runs, "failed"), better="lower", readme=False))
    text = [f"per condition: {rounds} rounds rotating the sides' order, per side and round its daemons started, "
            f"{WARMUP} unmeasured warm-up setup, then {runs} measured setups; a run starts at most every {PACE:g} s; "
            f"per-run limit {args.timeout:g} s", "", HEADER]
    text += [r.row() for r in rows]
    text += [f"  {r.driver} {r.condition}: {r.note}" for r in rows if r.note]
    if hang is not None:
        text += ["", f"hang check at 0 ms, limit {args.hang_timeout:g} s per run:", *(r.row() for r in hang.values())]
    fails = [f"  {r.driver} {r.condition}: {f}" for r in [*rows, *(hang.values() if hang else [])] for f in r.failures]
    if fails:
        text += ["", "failures:", *fails[:50]]
    notes = ["servers with their defaults: our mediation server's connect_rate 5/s per peer (burst 10); charon "
             "has no such limit",
             "ping RTT alice-carol through the hub per condition: " + (", ".join(rtts) or "-"),
             "strongSwan's ME_WAIT_TO_FINISH: src/libcharon/sa/ikev2/connect_manager.c, "
             "#define ME_WAIT_TO_FINISH 1000 /* ms */, scheduled when the first check succeeds while another "
             "pair is still in progress; it finishes at once when no pair is pending (one candidate pair)"]
    notes.append(f"method: each side's block in a round starts its daemons and does {WARMUP} unmeasured setup first "
                 "(the first setup after another side's block is slower on every side); the sides' order rotates by "
                 "one per round; the hang check counts every setup (no warm-up)")
    notes += relay_notes
    notes += args.note
    if before_after:
        notes.append(f"before/after (interleaved in the same labs; before = our daemons from {BEFORE}): "
                     + "; ".join(before_after))
    header = results_io.finish_header(header, args.quick, rounds)
    results_io.write_results(args.out, "mediated_setup", header, figures, "\n".join(text), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
