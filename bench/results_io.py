"""The benchmarks' shared results format: one header, medians with min-max, a .txt and a .json per bench.

Interface every bench script follows (bench/README.md says the same for people):

- command line (:func:`add_args`): ``--quick`` (a short smoke run, for tests/bench), ``--rounds N`` (how many
  interleaved A/B rounds, or repetitions where nothing is compared), ``--out bench/results/NAME.txt``;
- it writes ``NAME.txt`` (for people) and ``NAME.json`` next to it (:func:`write_results`), shape 1::

    {"schema": 1, "bench": "NAME",
     "header": {"date": "2026-12-06T07:40:00Z", "commit": "25b5695-dirty", "command": "bench/NAME.py --rounds 5",
                "machine": {"cpus": 2, "model": "AMD EPYC ...", "kernel": "6.18...", "python": "3.11.7"},
                "load_before": [1.2, 1.0, 0.9], "load_after": [1.5, 1.1, 0.9], "seconds": 123.4,
                "quick": false, "rounds": 5},
     "figures": [{"key": "up_to_child_0ms", "label": "`up` to mediated CHILD_SA, 0 ms added delay",
                  "ours": VALUE, "charon": VALUE or null, "ratio": 0.9 or null, "better": "lower",
                  "differences": ["charon waits 1000 ms (ME_WAIT_TO_FINISH) before ..."], "readme": true}],
     "notes": ["..."]}

  VALUE is a sample ``{"median": m, "min": a, "max": b, "n": k, "unit": "ms", "values": [...]}``
  (:func:`sample`) or a count of trials ``{"count": k, "of": n, "unit": "hangs"}`` (:func:`count`);
  ``ratio`` is ours' median / charon's (:func:`figure` computes it; null for counts or one side only);
  ``differences`` lists every configuration difference between the two sides that matters for the ratio
  (or, without a comparison, what the figure does not include); ``readme`` marks the figures that
  ``bench/readme_table.py`` puts into README.md's Figures table;
- A/B comparisons alternate the sides each round (:func:`interleave`: A B, B A, A B, ...), same settings on
  both sides where a setting exists on both, our users' defaults for ours.

``bench/run_all`` runs every script with ``--out bench/results/NAME.txt`` and checks the .json with
:func:`validate`; a script that writes no valid .json is reported as not adopted.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCHEMA = 1
# bench/run_all's order (and README.md's rows): the comparisons first, the long floods and scans last
ORDER = ["mediated_setup", "nat_matrix", "ike_setup_rate", "charon_initiator", "esp_throughput_iperf",
         "esp_throughput", "loss_setup", "registry_scale", "pool_scale", "cluster_scale", "cluster_engine",
         "fragment_flood", "ike_flood", "fuzz_ike"]


# ====================================================================== start-up
def enter_repo(script: str) -> Path:
    """Re-runs ``script`` under the repository's .venv (it has pyroute2, vici, the project's packages)
    unless this already is it, then puts the repository and bench/ first on sys.path; returns the root.
    Called before a script imports anything outside the standard library."""
    venv_py = ROOT / ".venv" / "bin" / "python"
    if venv_py.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_py), [str(venv_py), script, *sys.argv[1:]])
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    return ROOT


def git_tree(rev: str, into: Path | None = None, prefix: str = "bench-tree-") -> Path:
    """The source tree of commit `rev` of this repository (`git archive`), unpacked into `into` (a new
    temporary directory when None) by tar(1); the working tree stays untouched."""
    import tempfile

    d = into if into is not None else Path(tempfile.mkdtemp(prefix=prefix))
    d.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(d)], input=archive, check=True)
    return d


# ====================================================================== command line
def add_args(ap: Any, rounds: int, quick_rounds: int = 1) -> None:
    """The three options every bench script takes (``ap`` is an argparse.ArgumentParser)."""
    ap.add_argument("--quick", action="store_true", help="a short smoke run (tests/bench); figures are not meaningful")
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"interleaved A/B rounds or repetitions (default {rounds}, {quick_rounds} with --quick)")
    ap.add_argument("--out", type=Path, help="write the report here (bench/results/NAME.txt) and NAME.json next to it")
    ap.set_defaults(_rounds_default=rounds, _quick_rounds=quick_rounds)


def rounds_of(args: Any) -> int:
    """``--rounds`` if given, else the script's default (smaller with ``--quick``)."""
    if args.rounds is not None:
        return int(args.rounds)
    return int(args._quick_rounds if args.quick else args._rounds_default)


def interleave(rounds: int, sides: Sequence[str]) -> list[tuple[int, str]]:
    """(round, side) in A/B order: each round runs every side once, and the order alternates between
    rounds (A B, B A, ...) so that a drift in the machine's load falls on both sides alike."""
    out: list[tuple[int, str]] = []
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        out += [(r, s) for s in order]
    return out


# ====================================================================== header
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--exclude", "*"],
                             capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out or "?"


def strongswan_version() -> str | None:
    """The installed strongSwan's version (``swanctl --version`` prints it before it looks for a daemon)."""
    import re

    try:
        p = subprocess.run(["swanctl", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"strongSwan (\S+)", p.stdout + p.stderr)
    return m.group(1) if m else None


def start_header(argv: Sequence[str] | None = None, script: str | None = None) -> dict[str, Any]:
    """The header at the start of a run: date, machine, load before, commit, command."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = script or (Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix()
                      if Path(sys.argv[0]).resolve().is_relative_to(ROOT) else sys.argv[0])
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit(),
            "command": " ".join([name, *(shlex.quote(a) for a in args)]),
            "machine": {"cpus": os.cpu_count(), "model": _cpu_model(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "strongswan": strongswan_version(),
            "load_before": [round(x, 2) for x in os.getloadavg()], "_t0": time.monotonic()}


def finish_header(header: dict[str, Any], quick: bool, rounds: int | None) -> dict[str, Any]:
    """Adds the load after, the duration, ``quick`` and ``rounds``."""
    h = dict(header)
    t0 = h.pop("_t0", None)
    h["load_after"] = [round(x, 2) for x in os.getloadavg()]
    h["seconds"] = round(time.monotonic() - t0, 1) if t0 is not None else None
    h["quick"], h["rounds"] = bool(quick), rounds
    return h


def header_lines(h: dict[str, Any]) -> list[str]:
    m = h["machine"]
    lb, la = h["load_before"], h.get("load_after") or ["?"]
    return [f"date: {h['date']}  commit: {h['commit']}"
            + (f"  strongSwan {h['strongswan']}" if h.get("strongswan") else ""),
            f"machine: {m['cpus']} x {m['model']}, Linux {m['kernel']}, Python {m['python']}",
            f"load average (1 min): {lb[0]} before, {la[0]} after (the machine is shared; a quiet machine gives "
            "steadier figures)",
            f"rounds: {h.get('rounds') or 'each script its own'}{'  (--quick: a smoke run, not a measurement)' if h.get('quick') else ''}"
            + (f"  duration: {h['seconds']} s" if h.get("seconds") is not None else ""),
            f"command: {h['command']}"]


# ====================================================================== values and figures
def sample(values: Iterable[float], unit: str, digits: int = 3) -> dict[str, Any] | None:
    """Median, min, max and the values of a sample (None when it is empty: nothing was measured)."""
    vs = [float(v) for v in values]
    if not vs:
        return None
    return {"median": round(statistics.median(vs), digits), "min": round(min(vs), digits),
            "max": round(max(vs), digits), "n": len(vs), "unit": unit, "values": [round(v, digits) for v in vs]}


def count(k: int, of: int, unit: str) -> dict[str, Any]:
    """``k`` of ``of`` trials (hangs, successes)."""
    return {"count": int(k), "of": int(of), "unit": unit}


def figure(key: str, label: str, ours: dict[str, Any] | None, charon: dict[str, Any] | None = None,
           better: str | None = "lower", differences: Sequence[str] = (), readme: bool = True,
           ratio: float | None = None) -> dict[str, Any]:
    """One figure; the ratio is ours' median over charon's unless given."""
    if ratio is None and ours and charon and "median" in ours and "median" in charon and charon["median"]:
        ratio = ours["median"] / charon["median"]
    return {"key": key, "label": label, "ours": ours, "charon": charon,
            "ratio": round(ratio, 3) if ratio is not None else None, "better": better,
            "differences": list(differences), "readme": bool(readme)}


def _num(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    if a >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def fmt_value(v: dict[str, Any] | None) -> str:
    """``32 ms (26-34, n=10)`` / ``0 of 200 hangs`` / ``-``."""
    if not v:
        return "-"
    if "count" in v:
        return f"{v['count']} of {v['of']} {v['unit']}".rstrip()
    unit = f" {v['unit']}" if v.get("unit") else ""
    if v["n"] == 1 or v["min"] == v["max"]:
        return f"{_num(v['median'])}{unit} (n={v['n']})"
    return f"{_num(v['median'])}{unit} ({_num(v['min'])}-{_num(v['max'])}, n={v['n']})"


def fmt_ratio(f: dict[str, Any]) -> str:
    return "" if f.get("ratio") is None else f"{f['ratio']:.2f}x"


def figures_lines(figures: Sequence[dict[str, Any]]) -> list[str]:
    out = ["figures (median (min-max, n = runs); ratio = ours / charon, medians):"]
    for f in figures:
        ratio = fmt_ratio(f)
        out.append(f"- {f['label']}: ours {fmt_value(f['ours'])}"
                   + (f"; charon {fmt_value(f['charon'])}" if f.get("charon") else "")
                   + (f"; ratio {ratio} ({f['better']} is better)" if ratio else ""))
        out += [f"    difference: {d}" for d in f["differences"]]
    return out


# ====================================================================== files
def write_results(out: Path | str | None, bench: str, header: dict[str, Any], figures: Sequence[dict[str, Any]],
                  text: str = "", notes: Sequence[str] = ()) -> dict[str, Any]:
    """Prints the report; with ``out`` writes it to OUT (.txt) and the document to OUT with .json."""
    doc = {"schema": SCHEMA, "bench": bench, "header": header, "figures": list(figures), "notes": list(notes)}
    problems = validate(doc)
    if problems:
        raise ValueError(f"{bench}: results do not have the shared shape: {problems}")
    lines = [f"{bench}", *header_lines(header), ""]
    if text:
        lines += [text.rstrip("\n"), ""]
    lines += figures_lines(figures)
    if notes:
        lines += ["", "notes:", *(f"- {n}" for n in notes)]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(report)
        p.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def load(path: Path | str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    return doc


def _value_problems(where: str, v: Any) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, dict):
        return [f"{where}: not an object"]
    if "count" in v:
        return [f"{where}: missing {k}" for k in ("count", "of", "unit") if k not in v]
    out = [f"{where}: missing {k}" for k in ("median", "min", "max", "n", "unit") if k not in v]
    if not out and not v["min"] <= v["median"] <= v["max"]:
        out.append(f"{where}: median outside min-max")
    return out


def validate(doc: Any) -> list[str]:
    """Problems with a results document (empty: it has the shared shape)."""
    if not isinstance(doc, dict):
        return ["not an object"]
    out = [f"missing {k}" for k in ("schema", "bench", "header", "figures") if k not in doc]
    if out:
        return out
    if doc["schema"] != SCHEMA:
        out.append(f"schema {doc['schema']} (expected {SCHEMA})")
    h = doc["header"]
    out += [f"header: missing {k}" for k in ("date", "commit", "command", "machine", "load_before", "load_after",
                                             "rounds", "quick") if k not in h]
    if not isinstance(doc["figures"], list):
        return [*out, "figures: not a list"]
    keys = set()
    for i, f in enumerate(doc["figures"]):
        where = f"figures[{i}]"
        missing = [k for k in ("key", "label", "ours", "charon", "ratio", "differences", "readme") if k not in f]
        if missing:
            out.append(f"{where}: missing {', '.join(missing)}")
            continue
        if f["key"] in keys:
            out.append(f"{where}: duplicate key {f['key']}")
        keys.add(f["key"])
        out += _value_problems(f"{where}.ours", f["ours"]) + _value_problems(f"{where}.charon", f["charon"])
        if f["ours"] is None and f["charon"] is None:
            out.append(f"{where}: neither side measured")
        if not isinstance(f["differences"], list):
            out.append(f"{where}: differences not a list")
    return out
