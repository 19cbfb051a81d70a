"""``scenarios/run``: lists the scenarios and runs the all-charon ones to a PASSED verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

RUN = Path(__file__).resolve().parents[2] / "scenarios" / "run"

CHARON_SCENARIOS = ["charon-medsrv-psk", "charon-behind-same-nat"]


def test_runner_lists_scenarios() -> None:
    out = subprocess.run([sys.executable, str(RUN)], capture_output=True, text=True, check=True).stdout
    for name in CHARON_SCENARIOS:
        assert name in out


@pytest.mark.netns
@pytest.mark.interop
@needs("root", "strongswan", why="the charon scenarios in network namespaces")
@pytest.mark.parametrize("name", CHARON_SCENARIOS)
def test_runner_charon_scenario(name: str) -> None:
    res = subprocess.run([sys.executable, str(RUN), name], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{name}: PASSED" in res.stdout
