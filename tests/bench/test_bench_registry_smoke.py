"""Smoke test: bench/registry_scale.py --quick (200 peers, one round) runs end to end and writes the shared
results shape. Only completion and positive numbers are asserted, no timing thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_run import figures, readme_rows, run_quick

pytestmark = [pytest.mark.netns, pytest.mark.needs("root", "iproute2")]


def test_registry_scale_quick(tmp_path: Path) -> None:
    doc = run_quick("registry_scale", tmp_path, timeout=180)
    figs = figures(doc)
    per, rate = figs["registry_200_kib_per_peer"], figs["registry_200_reg_rate"]
    assert per["readme"] and rate["readme"]
    assert per["ours"]["n"] == 1 and per["ours"]["median"] > 0 and rate["ours"]["median"] > 0
    assert figs["registry_200_cpu_keepalive"]["ours"]["median"] >= 0
    assert any("cookie_threshold" in d for d in per["differences"])
    assert len(readme_rows(tmp_path)) == 2
