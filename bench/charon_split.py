"""bench/charon_initiator.py's account of where ours' CPU goes: one more batch recorded against an iked that
times its engine and event handling (bench/ike_cost.py's recording iked), replayed in a tight loop, with
idle time between the datagrams and A/B against `--before`; and the live responder's py-spy profile split
into the engine, the daemon's event handling and the rest."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import results_io
from ike_cost import datagram_count, replay, replay_ab
from ike_setup_rate import hot_spots


@dataclass(frozen=True)
class Split:
    """Where ours' CPU goes, ms per IKE_SA: the live recording iked (process, engine, event handling) and
    the replay of its datagrams in a tight loop (engine with event handling)."""

    n: int
    process: float
    engine: float
    events: float
    replayed: float
    ab: tuple[list[float], list[float]] = ([], [])  # replay_ab: this tree, `--before`
    gap_ms: float = 0.0  # the live batch's mean time between the datagrams the engine received
    replayed_gap: float | None = None  # the replay with that time slept before each datagram
    log_cost: tuple[list[float], list[float]] = ([], [])  # log_cost_ab: this tree, `--before`


def split(lab: Any, pki: Any, a: Any, before: Path | None, record: Callable[..., Any]) -> dict[str, Split]:
    """{auth: Split} from one recorded batch per auth method (`record`: charon_initiator.record)."""
    import tempfile

    out: dict[str, Split] = {}
    for auth in a.auth.split(","):
        with tempfile.TemporaryDirectory(prefix="charon-initiator-") as d:
            r = record(lab, auth, pki, a.count if auth == "psk" else a.count_rsa, a.inflight, Path(d))
            ms, replayed = replay(Path(d))
            k = 1000 / max(1, r.established)
            ab = replay_ab(Path(d), r.established, before, results_io.rounds_of(a)) if before is not None else ([], [])
            # the cold start after each wake-up: the same replay, idle between the datagrams as live
            gap = r.seconds / max(1, datagram_count(Path(d)))
            ms_gap, n_gap = replay(Path(d), gap)
            logged = log_cost_ab(Path(d), r.established, before, results_io.rounds_of(a))
            sp = Split(r.established, k * r.process, k * r.engine, k * r.events, ms, ab, 1000 * gap,
                       ms_gap if n_gap == replayed else None, logged)
            print(f"  split {auth}: {r.established} IKE_SAs recorded (live: process {sp.process:.3f}, engine "
                  f"{sp.engine:.3f}, event handling {sp.events:.3f} ms/IKE_SA), replayed {replayed}: "
                  f"{ms:.3f} ms/IKE_SA", file=sys.stderr, flush=True)
            if replayed == r.established:
                out[auth] = sp
    return out


_LOG_COST = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import core_ike, core_ike.daemon.main, core_ike.daemon.runtime
assert core_ike.__file__.startswith(sys.argv[1])
import ike_cost
out, runs = Path(sys.argv[3]), int(sys.argv[4])
warning, info, n = [], [], set()
for _ in range(runs):
    for level, kept in (("warning", warning), ("info", info)):
        ms, got = ike_cost.replay(out, log_level=level)
        kept.append(ms)
        n.add(got)
print(json.dumps([min(info) - min(warning), sorted(n)]))
"""


def log_cost_ab(out: Path, n_want: int, tree: Path | None, rounds: int, runs: int = 3) -> tuple[list[float],
                                                                                               list[float]]:
    """What the log at info costs per IKE_SA in the replay of the recording in `out`: the log set up as
    iked sets it up (a file) at warning and at info, `runs` replays each in one process, the least CPU
    time of each level (interference from other processes only ever adds time), info minus warning; by
    this tree and by `tree` (`--before`), each in its own process, alternating `rounds` times. ([ms per
    IKE_SA of this tree], [of `tree`]); a side whose replays do not establish every IKE_SA gives none."""
    import json
    import os
    import subprocess

    res: dict[str, list[float]] = {"ours": [], "before": []}
    for _, side in results_io.interleave(rounds, ["ours", "before"] if tree is not None else ["ours"]):
        src = str(results_io.ROOT if side == "ours" else tree)
        p = subprocess.run([sys.executable, "-c", _LOG_COST, src, str(Path(__file__).parent), str(out), str(runs)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        if p.returncode != 0:
            print(f"  log cost by {side} failed: {p.stderr.strip()[-300:]}", file=sys.stderr, flush=True)
            continue
        ms, got = json.loads(p.stdout.strip().splitlines()[-1])
        if got == [n_want]:
            res[side].append(ms)
    return res["ours"], res["before"]


def split_lines(sp: Split | None, rev: str | None = None) -> list[str]:
    import statistics

    if sp is None:
        return []
    rest = sp.process - sp.engine - sp.events
    gap: list[str] = []
    live, excess = sp.engine + sp.events, sp.engine + sp.events - sp.replayed
    if sp.replayed_gap is not None:
        cold = "the cold start after each wake-up, code and data back into the CPU caches"
        if sp.replayed_gap >= live:
            share = (f", as much as the live engine's {live:.3f} or more: idle time alone brings back its excess over "
                     f"the tight loop ({cold}; live, a wake-up sometimes finds two datagrams)")
        elif excess > 0:
            share = (f": {100 * (sp.replayed_gap - sp.replayed) / excess:.0f} % of the live engine's excess over the "
                     f"tight loop comes back with idle time alone ({cold})")
        else:
            share = ""
        gap = [f"the same replay sleeping {sp.gap_ms:.2f} ms before each datagram (the live batch's mean time "
               f"between them; sleep costs no CPU): {sp.replayed_gap:.3f} ms per IKE_SA{share}"]
    ours, before = sp.ab
    ab = [] if not ours or not before else [
        f"the engine alone, A/B: the same recorded datagrams replayed by this tree and by {rev}, each in its "
        f"own process, alternating: {results_io.fmt_value(results_io.sample(ours, 'ms'))} vs "
        f"{results_io.fmt_value(results_io.sample(before, 'ms'))} per IKE_SA; this tree / {rev}: "
        f"{statistics.median(ours) / statistics.median(before):.2f}x"]
    ours_log, before_log = sp.log_cost
    logged = [] if not ours_log else [
        "what the log at info (users' default; to a file) costs in the same replay, info minus warning (each the "
        f"least of 3 replays in one process, the processes alternating): {results_io.fmt_value(results_io.sample(ours_log, 'ms'))}"
        " per IKE_SA" + ("" if not before_log else
                         f"; {rev}: {results_io.fmt_value(results_io.sample(before_log, 'ms'))}; this tree / {rev}: "
                         f"{statistics.median(ours_log) / statistics.median(before_log):.2f}x")]
    return [f"where ours' CPU goes (one more batch of {sp.n} after the rounds, against an iked with seeded "
            f"randomness that times its engine and event handling with the thread's CPU clock): process "
            f"{sp.process:.3f} ms per IKE_SA = engine {sp.engine:.3f} + the daemon's event handling "
            f"{sp.events:.3f} + the rest {rest:.3f} (event loop, transport, socket calls, the kernel's UDP path "
            f"and wake-ups); the same datagrams replayed to the engine in one process in a tight loop: "
            f"{sp.replayed:.3f} ms per IKE_SA (engine with event handling)", *gap, *ab, *logged]


def live_split(raw: Path) -> dict[str, float] | None:
    """Shares of the live responder's py-spy samples (collapsed stacks, --native): the engine, the daemon's
    event handling, the rest (event loop, transport, socket calls). Stacks that end in the send system
    call or in the epoll wait are left out: py-spy samples wall time, and those are mostly the process
    waiting for a CPU after waking the initiator, or idle."""
    parts = {"engine": 0, "event handling": 0, "event loop and transport": 0}
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not n_s.isdigit():
            continue
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if frames[-1] in ("sendto", "sendmmsg", "epoll_wait", "epoll_pwait"):
            continue
        if "Engine.receive" in frames or "Engine.handle_timer" in frames:
            parts["engine"] += int(n_s)
        elif "Daemon.on_event" in frames:
            parts["event handling"] += int(n_s)
        else:
            parts["event loop and transport"] += int(n_s)
    total = sum(parts.values())
    return {k: v / total for k, v in parts.items()} if total else None


def py_spy(pid: int, out: Path) -> Any:
    import subprocess

    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("py-spy not installed in the venv; no profile", file=sys.stderr)
        return None
    # --native: the C frames (socket calls, ctypes, the event loop's select) beside the Python ones; without
    # --gil, time in system calls that release the GIL counts too (idle waits do not)
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "500",
                             "--native", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_hotspots(prof: Path) -> None:
    for f in sorted(prof.glob("ours-*.txt")):
        hs = hot_spots(f)
        shares = live_split(f)
        if shares:
            hs = ("live split (samples outside sendto and epoll_wait): "
                  + ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items()) + "\n" + hs)
        (prof / f"hotspots-{f.stem}.txt").write_text(hs)
