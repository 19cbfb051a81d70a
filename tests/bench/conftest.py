"""Fixtures of the bench tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # before it runs: its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def load_bench() -> Callable[[str], ModuleType]:
    """``load_bench("ike_flood")``: bench/ike_flood.py, freshly imported as module ``ike_flood``."""
    return _load
