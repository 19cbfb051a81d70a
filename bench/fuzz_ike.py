#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoder, the pre-filter and Engine.receive.

The targets are the hypothesis tests of tests/unit/ike/test_ike_fuzz_coverage.py (the test command runs
them bounded and derandomized for a few seconds); here atheris drives them through hypothesis'
``fuzz_one_input`` with core_ike instrumented, for as long as you ask, keeping a corpus. ``raw`` feeds
libFuzzer's bytes straight to the decoder and the pre-filter's walk (no structure). A crash stops the run
with the input saved by libFuzzer (``test-output/fuzz-crashes/crash-*``); hypothesis prints the failing example.

    .venv/bin/pip install atheris                      # in the test extras (tests/bench runs it --quick)
    .venv/bin/python bench/fuzz_ike.py --target engine --seconds 600
    .venv/bin/python bench/fuzz_ike.py --seconds 60 --out bench/results/fuzz_ike.txt   # and fuzz_ike.json
    .venv/bin/python bench/fuzz_ike.py --quick                                         # 3 s per target

Each target runs in its own process and reports libFuzzer's final line (executions, coverage
edges ``cov``, features ``ft``, corpus size) and the executions per second.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
if _VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])
for p in (ROOT, ROOT / "tests" / "unit" / "ike", ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import results_io  # noqa: E402

TARGETS = ("raw", "decode", "walk", "engine")
CORPUS = ROOT / "test-output" / "fuzz-corpus"


def run_one(target: str, seconds: int, corpus_root: Path = CORPUS) -> None:
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # the engine logs every bad packet; the fuzzer needs no log
    with atheris.instrument_imports(include=["core_ike"]):
        import core_ike.codec.message
        import core_ike.codec.wire
        import core_ike.ike.engine
        import core_ike.ike.prefilter
        import core_ike.ike.sa
        import core_ike.ike.tasks.ike_auth
        import core_ike.ike.tasks.ike_init  # noqa: F401
    import test_ike_fuzz_coverage as t

    if target == "raw":
        from core_ike.codec.message import decode_message
        from core_ike.errors import DecodeError, ProtocolError
        from core_ike.ike.prefilter import scan_init

        def fuzz(data: bytes) -> None:
            with contextlib.suppress(DecodeError, ProtocolError):
                decode_message(data)
            if len(data) >= 28:
                scan_init(data, data[16])
    else:
        test = {"decode": t.test_decoder_raises_only_typed_errors, "walk": t.test_prefilter_walk_agrees_with_the_decoder,
                "engine": t.test_engine_receive_never_raises_and_keeps_serving}[target]
        fuzz = test.hypothesis.fuzz_one_input  # type: ignore[attr-defined]
    corpus = corpus_root / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = ROOT / "test-output" / "fuzz-crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1", "-rss_limit_mb=4096",
                   f"-artifact_prefix={crashes}/", str(corpus)], fuzz)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--target", choices=TARGETS, action="append", help="only these targets (default: every one)")
    ap.add_argument("--all", action="store_true", help="every target (the default)")
    ap.add_argument("--seconds", type=int, help="per target and round (default 60, 3 with --quick)")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help=f"corpus directory (default {CORPUS.relative_to(ROOT)})")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    results_io.add_args(ap, rounds=1)
    a = ap.parse_args(argv)
    seconds = a.seconds or (3 if a.quick else 60)
    if a.one:
        run_one(a.one, seconds, a.corpus)
        return 0
    header = results_io.start_header(argv)
    rounds = results_io.rounds_of(a)
    targets = tuple(a.target) if a.target else TARGETS
    lines = [f"coverage-guided fuzzing (atheris over libFuzzer, core_ike instrumented), {seconds} s per target "
             f"and round, {rounds} round(s); the corpus in {a.corpus} carries over", ""]
    rate: dict[str, list[float]] = {t: [] for t in targets}
    cov: dict[str, list[float]] = {t: [] for t in targets}
    crashed: dict[str, int] = dict.fromkeys(targets, 0)
    for rnd in range(rounds):
        for target in targets:
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, __file__, "--one", target, "--seconds", str(seconds),
                                "--corpus", str(a.corpus)],
                               capture_output=True, text=True, cwd=ROOT)
            secs = time.monotonic() - t0
            out = p.stdout + p.stderr
            done = [ln for ln in out.splitlines() if " DONE " in ln or ("#" in ln and " cov: " in ln)]
            runs = re.search(r"stat::number_of_executed_units: (\d+)", out)
            edges = re.findall(r" cov: (\d+)", out)
            n = int(runs.group(1)) if runs else 0
            status = "ok" if p.returncode == 0 else f"FAILED (exit {p.returncode})"
            crashed[target] += p.returncode != 0
            rate[target].append(n / max(secs, 1e-9))
            if edges:
                cov[target].append(float(edges[-1]))
            lines.append(f"round {rnd + 1} {target:7} {status}: {n} executions in {secs:.0f} s "
                         f"({n / max(secs, 1e-9):.0f}/s); " + (done[-1].strip() if done else "no libFuzzer status line"))
            if p.returncode != 0:
                lines += ["  " + ln for ln in out.splitlines()[-40:]]
    header = results_io.finish_header(header, a.quick, rounds)
    runs_total = rounds * len(targets)
    figs = [results_io.figure("fuzz_crashes", f"coverage-guided fuzzing of the decoder, the pre-filter and "
                              f"Engine.receive ({', '.join(targets)}; {seconds} s each): runs that crashed",
                              results_io.count(sum(crashed.values()), runs_total, "runs"),
                              differences=["strongSwan is not fuzzed here"])]
    for t in targets:
        figs.append(results_io.figure(f"fuzz_{t}_rate", f"fuzzing target {t}: executions per second",
                                      results_io.sample(rate[t], "exec/s", 0), better="higher", readme=False))
        if cov[t]:
            figs.append(results_io.figure(f"fuzz_{t}_cov", f"fuzzing target {t}: coverage edges at the end",
                                          results_io.sample(cov[t], "edges", 0), better="higher", readme=False))
    results_io.write_results(a.out, "fuzz_ike", header, figs, "\n".join(lines))
    return 1 if any(crashed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
