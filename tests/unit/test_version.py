"""`--version` on every installed command: `PROG (ikeme) VERSION`, VERSION being pyproject.toml's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core_ike.version import package_version, version_line

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = sorted(PYPROJECT["project"]["scripts"])
BIN = Path(sys.executable).parent


def test_every_command_is_covered() -> None:
    assert set(COMMANDS) == {"iked", "ikectl", "ikeme-ipsec", "mediation-server", "mediation-client",
                             "medmgr-server", "medmgr-client", "medmgr-sa"}


def test_installed_metadata_matches_pyproject() -> None:
    # a stale editable install (pyproject bumped, `pip install -e .` not re-run) reports the old release
    assert package_version() == PYPROJECT["project"]["version"]


@pytest.mark.parametrize("command", COMMANDS)
def test_version_option(command: str) -> None:
    exe = BIN / command
    assert exe.exists(), f"{exe} is not installed: run `pip install -e .[test]`"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{command} (ikeme) {PYPROJECT['project']['version']}\n"
    assert res.stderr == ""


def test_version_line() -> None:
    assert version_line("iked") == f"iked (ikeme) {package_version()}"
