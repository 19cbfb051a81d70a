"""Hard NATs through real nftables NATs (scenarios/nat-matrix, core_ike/me/predict.py): a symmetric NAT
with sequential ports facing a port-restricted one, and one on each side, give ours a direct tunnel
to a predicted port (not the relay), as `NAT_MATRIX_CELLS=... scenarios/run nat-matrix --quick` shows
(checks only: nothing is written to bench/results)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, needs("root", why="NAT labs with our daemons in network namespaces")]


def test_sequential_symmetric_nats_go_direct_by_predicted_ports() -> None:
    env = {**os.environ, "NAT_MATRIX_CELLS": "pr-symseq,symseq-symseq"}
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "nat-matrix", "--quick"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "nat-matrix: PASSED" in res.stdout, out
    rows = {line.strip().split("  ")[0]: line for line in res.stdout.splitlines() if " x " in line and "pkts" in line}
    assert set(rows) == {"port-restr x sym seq", "sym seq x sym seq"}, rows
    for label, line in rows.items():
        # direct to the peer's public address on a port its NAT gave out after the discovery's
        assert "direct (203.0.113.2[" in line and "APDM/APDF seq" in line, (label, line)
