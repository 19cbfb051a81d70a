"""Smoke test: bench/loss_setup.py runs end to end (ours, one run per case). Completion and the report's
shape are asserted, no timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    needs("root", why="bench/loss_setup.py builds network namespaces"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_loss_setup_smoke(tmp_path: Path) -> None:
    out = tmp_path / "loss_setup.txt"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "loss_setup.py"), "--runs", "1", "--drivers", "ours",
                        "--limit", "50", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    assert "machine:" in text and "commit:" in text
    rows = {tuple(line.split()[:2]): line.split() for line in text.splitlines()
            if line.startswith(("mediated ", "direct "))}
    assert set(rows) == {("mediated", "ours"), ("direct", "ours")}, text
    for row in rows.values():
        assert row[2] in ("0/1", "1/1"), row  # ok within the target (a data point, not asserted)
