"""The report of bench/ike_setup_rate.py: its table and its figures (the shared results shape of
bench/results_io.py) from the measurements (ike_setup_rate.Result, read by attribute only)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import results_io
from ike_driver import PROPOSAL

Result = Any  # ike_setup_rate.Result (this module is imported by it)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def driver_text(driver: str) -> str:
    """What the driver sends and computes (a "difference:" line of each figure)."""
    if driver == "template":
        return ("driver: the Engine initiator's own messages as templates (bench/ike_template_driver.py; IKE_SA_INIT: "
                "SA, KE, Ni, NAT-D, FRAGMENTATION_SUPPORTED, SIGNATURE_HASH_ALGORITHMS, CHILDLESS_IKEV2_SUPPORTED; "
                "IKE_AUTH: IDi, IDr, AUTH, INITIAL_CONTACT; no MOBIKE), per IKE_SA its own SPIi, Ni and X25519 key "
                "(drawn before the batch), NAT-D hashes, real DH, keys, AUTH (PSK: an identity per IKE_SA; RSA-2048 "
                "signature as the Engine signs) and SK payload; it decrypts the IKE_AUTH response and checks its "
                "payloads but does not verify the responder's AUTH, and does not retransmit")
    return ("driver: our sans-IO Engine as initiator (NAT-D, FRAGMENTATION_SUPPORTED, SIGNATURE_HASH_ALGORITHMS, "
            "CHILDLESS_IKEV2_SUPPORTED; no MOBIKE), verifying the responder's AUTH")


def table(results: list[Result], inflight: int, drivers: int, warmup: int,
          load: tuple[float, float] | None = None, driver: str = "template") -> str:
    lines = [
        "IKE_SA setup rate: childless IKE_SA (IKE_SA_INIT + IKE_AUTH, RFC 6023, no CHILD_SA), "
        f"{PROPOSAL}",
        ("driver: the Engine's messages as templates (bench/ike_template_driver.py)" if driver == "template"
         else "driver: our sans-IO Engine as initiator")
        + f", {drivers} process(es) in netns alice, {inflight} setups "
        f"in flight; responder in netns bob; {warmup} warm-up SAs before each measured batch",
        f"host: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}"
        + (f", 1-min load average before/after: {load[0]:.2f}/{load[1]:.2f}" if load else ""),
        "",
        f"{'auth':5} {'responder':9} {'SAs':>6} {'held':>6} {'setups/s':>9} {'CPU ms/SA':>10} {'KiB/SA':>8} "
        f"{'driver ms/SA':>13} {'driver busy':>12} {'wake-ups/SA':>12} {'preempted/SA':>13}",
    ]
    by = {(r.auth, r.impl): r for r in results}  # the last round's, for the ratio line
    for auth in dict.fromkeys(r.auth for r in results):
        for r in sorted((r for r in results if r.auth == auth), key=lambda r: r.impl):
            lines.append(f"{auth:5} {r.impl:9} {r.established:6d} {r.held:6d} {r.rate:9.0f} {r.cpu_ms:10.3f} "
                         f"{r.kib:8.1f} {r.driver_ms:13.2f} {100 * r.driver_busy:11.0f}% "
                         f"{r.switches[0] / max(1, r.established):12.2f} {r.switches[1] / max(1, r.established):13.2f}"
                         + (f"  capacity {r.capacity:.0f}/s, workers' CPU s "
                            + "/".join(f"{c:.2f}" for c in r.worker_cpu) if r.worker_cpu else ""))
        o, c = by.get((auth, "ours")), by.get((auth, "charon"))
        if o and c:
            lines.append(f"{auth:5} {'ours/ch.':9} {'':6} {'':6} {_ratio(o.rate, c.rate):>9} "
                         f"{_ratio(o.cpu_ms, c.cpu_ms):>10} {_ratio(o.kib, c.kib):>8}")
    lines += ["", "target: setups/s ratio >= 1, CPU ratio <= 0.5, KiB/SA ratio <= 1",
              "held = IKE_SAs the responder lists after the batch (warm-up SAs included)",
              "driver busy = driver CPU / (wall time x driver processes); near 100% means the driver limits the rate",
              "wake-ups/SA, preempted/SA = the responder's voluntary and involuntary context switches per IKE_SA "
              "(all its processes)",
              "setups/s needs an otherwise idle machine (driver and responder share its CPUs); CPU ms/SA and",
              "KiB/SA are per-process figures and hardly depend on other load"]
    return "\n".join(lines) + "\n"


AUTOGROUP_NOTE = (
    "scheduling: the lab starts each daemon in a session of its own and the kernel shares the CPUs between "
    "sessions first (autogroup, sched(7)); the N-worker daemon's session gets the weight of N processes (autogroup "
    "nice -3 for N = 2, ike_setup_rate.set_autogroup_weight), as N single-process daemons would have: without it "
    "its workers shared one process's share whenever the machine had other work, so a single process beside them "
    "was woken for fewer datagrams at a time (5x the wake-ups per IKE_SA) and paid more per IKE_SA")
SEQUENTIAL_NOTES = [
    "CPU-normalised: the batch's IKE_SAs over the CPU seconds of the busiest worker (the rate with a core per "
    "worker), workers = N over workers = 1 of the same round (one after the other); the driver shares the "
    "machine's 2 CPUs, so the wall rate cannot show it",
    "the driver shares the workers' CPUs and sets the rate: each of N workers carries about 1/N of the one "
    "worker's load, so it sleeps and wakes more often per IKE_SA (wake-ups/SA; a wake-up finds its caches cold), "
    "and with N = 2 three busy processes share 2 CPUs; both add to a worker's CPU per IKE_SA, which a saturated "
    "worker on a core of its own would not pay, and the two batches meet the machine's other load at different "
    "moments: a noisy lower bound",
    AUTOGROUP_NOTE]
PAIRED_NOTES = [
    "CPU-normalised and paired: workers = 1 and workers = N (on two addresses of the responder's host) measured in "
    "the same batch, the driver sending them IKE_SAs 1 : N in turn, so that every worker process carries the same "
    "rate at the same time and meets the same load of the machine; capacity = a responder's IKE_SAs over the CPU "
    "seconds of its busiest process (the rate with a core per process), ratio per batch",
    "what it leaves out: all processes share the machine's 2 CPUs (with N = 2 four busy ones with the driver), so "
    "none is saturated and each pays the wake-ups of a partly loaded process (wake-ups/SA), the single process "
    "as much as each of the N workers: the ratio is that of a worker of N to a single process at equal load, "
    "which includes the steering and the busiest worker's share of the IKE_SAs",
    AUTOGROUP_NOTE]


def capacity_figures(auth: str, by: dict[str, list[Result]], driver: str) -> list[dict[str, Any]]:
    """IKE_SA setup capacity, workers = N over workers = 1: from paired batches (`pair-wN` with `pair-w1`,
    key setup_capacity_wN_AUTH, in the README) when there are any, and from the rounds of `ours-wN` and
    `ours` (key setup_capacity_wN_AUTH, or ..._sequential beside paired ones) and of `before-wN` and `before`."""
    figs: list[dict[str, Any]] = []
    paired = any(i.startswith("pair-w") and i != "pair-w1" for i in by)
    drv = driver_text(driver)
    for side in ("pair", "ours", "before"):
        base = by.get("pair-w1" if side == "pair" else side, [])
        w1 = [r.capacity for r in base]
        for impl, rs in by.items():
            if not impl.startswith(f"{side}-w") or impl == "pair-w1" or not w1:
                continue
            n = int(impl.partition("-w")[2])
            pairs = list(zip(w1, (r.capacity for r in rs), strict=False))  # round by round (interleaved)
            key = f"setup_capacity_w{n}_{auth}" + {"pair": "", "ours": "_sequential" if paired else "",
                                                   "before": "_before"}[side]
            what = {"pair": ", paired", "ours": ", one after the other" if paired else "",
                    "before": ", the tree of --before"}[side]
            notes = PAIRED_NOTES if side == "pair" else SEQUENTIAL_NOTES
            split = ""
            if rs and all(r.worker_cpu for r in rs):
                shares = [max(r.worker_cpu) / sum(r.worker_cpu) for r in rs if sum(r.worker_cpu)]
                split = f"; the busiest worker's share of the workers' CPU: {statistics.median(shares):.3f} (median)"
            figs.append(results_io.figure(
                key, f"IKE_SA setup capacity, workers = {n} over workers = 1 ({auth.upper()}, CPU-normalised{what})",
                results_io.sample([b / a for a, b in pairs if a], "x", 2), None, better="higher",
                differences=[*notes, drv,
                             f"workers = {n}: " + ", ".join(f"{r.capacity:.0f}/s" for r in rs)
                             + "; workers = 1: " + ", ".join(f"{c:.0f}/s" for c in w1) + split],
                readme=side == "pair" or (side == "ours" and not paired)))
    return figs


def figures_of(res: list[Result], inflight: int, driver: str = "template") -> list[dict[str, Any]]:
    """The shared results shape (bench/results_io.py): per auth, CPU per IKE_SA ours vs charon, the
    setup rate, and the CPU-normalised capacity of workers = N over workers = 1."""
    figs: list[dict[str, Any]] = []
    same = ("same on both sides: childless IKE_SAs, " + PROPOSAL + ", COOKIEs off (cookie thresholds "
            "raised to 10^6 on both), no data plane; ours log_level warning, charon log level 0")
    for auth in dict.fromkeys(r.auth for r in res):
        by: dict[str, list[Result]] = {}
        for r in res:
            if r.auth == auth:
                by.setdefault(r.impl, []).append(r)
        ours, ch = by.get("ours", []), by.get("charon", [])
        diffs = [same, f"{driver_text(driver)}; {inflight} in flight, 16 source addresses",
                 "ours: one process (workers = 1, the default); charon: threads = 16 on both CPUs"]
        figs += [] if not (ours or ch) else [results_io.figure(
            f"setup_cpu_{auth}", f"responder CPU per IKE_SA ({auth.upper()}, {driver} driver)",
            results_io.sample([r.cpu_ms for r in ours], "ms"), results_io.sample([r.cpu_ms for r in ch], "ms"),
            differences=diffs, readme=True), results_io.figure(
            f"setup_rate_{auth}", f"IKE_SA setups per second ({auth.upper()}, driver and responder on the same 2 CPUs)",
            results_io.sample([r.rate for r in ours], "/s", 0), results_io.sample([r.rate for r in ch], "/s", 0),
            better="higher", differences=[*diffs, "the driver shares the CPUs: a driver-bound rate"], readme=False)]
        figs += capacity_figures(auth, by, driver)
        for impl in [i for i in by if i.startswith("before")]:
            mine = [r.cpu_ms for r in by.get("ours" + impl.removeprefix("before"), [])]
            theirs = [r.cpu_ms for r in by[impl]]
            if mine:
                figs.append(results_io.figure(
                    f"setup_cpu_{auth}_{impl}", f"responder CPU per IKE_SA ({auth.upper()}, "
                    f"{impl.replace('before', 'ours')}, this tree)", results_io.sample(mine, "ms"), None,
                    differences=[f"the tree of --before, interleaved round by round, the same configuration and driver: "
                                 f"{results_io.fmt_value(results_io.sample(theirs, 'ms'))}; this tree / --before: "
                                 f"{statistics.median(mine) / statistics.median(theirs):.2f}x"], readme=False))
    return figs
