"""The task contract of .importlinter names every module of core_ike/ike except context.py and state.py,
so a module added later is covered too (lint-imports itself runs in scripts/test.sh)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_tasks_direct_contract_lists_every_other_ike_module() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    forbidden = set(cfg["importlinter:contract:tasks-direct"]["forbidden_modules"].split())
    modules = {f"core_ike.ike.{p.stem}" for p in (ROOT / "core_ike" / "ike").glob("*.py")
               if p.stem not in ("__init__", "context", "state")}
    assert forbidden == modules
