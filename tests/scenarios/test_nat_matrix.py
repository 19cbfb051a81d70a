"""`scenarios/run nat-matrix --quick`: three representative cells of the NAT matrix through real nftables
NATs (port-restricted x port-restricted, port-restricted x symmetric, the same with miniupnpd on the
symmetric side), ours and (where it connects) three charons, to a PASSED verdict: ours direct, direct by
many-port probing (core_ike/me/birthday.py), and direct to the port mapping; every failing side names its
reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, needs("root", "strongswan", "miniupnpd", why="NAT labs with our daemons, charons and miniupnpd")]


def test_nat_matrix_quick() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "nat-matrix", "--quick"],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "nat-matrix: PASSED" in res.stdout and "FAIL " not in res.stdout, out
    rows = {line.strip().split("  ")[0]: line for line in res.stdout.splitlines() if " x " in line and "pkts" in line}
    assert "direct" in rows["port-restr x port-restr"] and "EIM/APDF" in rows["port-restr x port-restr"], rows
    assert "direct (203.0.113.2[" in rows["port-restr x sym rand"] and "APDM/APDF rand" in rows["port-restr x sym rand"], rows
    assert "direct (port mapping)" in rows["port-restr x sym rand + miniupnpd"], rows


def test_quick_is_refused_where_a_scenario_has_none() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "symmetric-nat", "--quick"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode != 0 and "has no --quick version" in res.stdout, res.stdout + res.stderr
