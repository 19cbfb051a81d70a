"""Smoke test: bench/loss_setup.py --quick runs end to end (ours, one run per case) and writes the shared
results shape; the README generator turns it into rows. Completion and shape are asserted, no timing."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_run import figures, readme_rows, run_quick

pytestmark = [pytest.mark.netns, pytest.mark.needs("root", "iproute2")]


def test_loss_setup_quick(tmp_path: Path) -> None:
    doc = run_quick("loss_setup", tmp_path, "--drivers", "ours")
    figs = figures(doc)
    assert {"loss_mediated_within", "loss_direct_within"} <= set(figs)
    for case in ("mediated", "direct"):
        within = figs[f"loss_{case}_within"]
        assert within["ours"]["of"] == 1 and within["ours"]["count"] in (0, 1)  # a data point, not asserted
        assert within["charon"] is None and within["ratio"] is None
    assert any("ME_WAIT_TO_FINISH" in d for d in figs["loss_mediated_within"]["differences"])
    rows = readme_rows(tmp_path)
    assert any("smoke run" in r and "loss_setup.txt" in r for r in rows)
