"""Smoke runs of the in-process benches (fragment flood, fuzzing) with --quick: the shared results shape,
the figures the README takes, and the README generator over them (no timing assertions)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from bench_run import ROOT, figures, readme_rows, run_quick


def test_fragment_flood_quick(tmp_path: Path) -> None:
    doc = run_quick("fragment_flood", tmp_path)
    figs = figures(doc)
    assert figs["fragment_flood_mids_rss"]["readme"] and figs["fragment_flood_sas_peak"]["readme"]
    held = figs["fragment_flood_mids_held"]["ours"]
    assert held["n"] == 1 and held["median"] < 62  # one incomplete set at most (the expected Message ID)
    assert figs["fragment_flood_sas_peak"]["ours"]["median"] <= 64 * 1024  # frag_max_total
    assert len(readme_rows(tmp_path)) == 2


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris (the test extra) is not installed: pip install -e .[test]")
def test_fuzz_ike_quick(tmp_path: Path) -> None:
    """The run and its report, from a fresh corpus; a crash the fuzzer finds is reported (exit 1, the count,
    the target's FAILED line), not asserted away: finding failures is what it is for."""
    doc = run_quick("fuzz_ike", tmp_path, "--seconds", "2", "--corpus", str(tmp_path / "corpus"), timeout=120,
                    ok_codes=(0, 1))
    figs = figures(doc)
    crashes = figs["fuzz_crashes"]["ours"]
    assert crashes["of"] == 4 and crashes["unit"] == "runs"
    failed_lines = [ln for ln in (tmp_path / "fuzz_ike.txt").read_text().splitlines()
                    if ln.startswith("round ") and " FAILED " in ln]
    assert crashes["count"] == len(failed_lines)
    assert all(figs[f"fuzz_{t}_rate"]["ours"]["median"] > 0 for t in ("raw", "decode", "walk", "engine"))
    assert len(readme_rows(tmp_path)) == 1


def test_run_all_quick_one_bench(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all"), "--quick", "--only", "fragment_flood",
                        "--results", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "fragment_flood           ok" in p.stdout
    assert (tmp_path / "fragment_flood.json").exists() and not (tmp_path / "run_all.txt").exists()
    listing = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all"), "--list"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT).stdout
    assert "fragment_flood           adopted" in listing and "loss_setup               adopted" in listing
