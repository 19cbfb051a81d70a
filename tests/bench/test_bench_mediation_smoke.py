"""Smoke test: bench/mediated_setup.py (ours and charon) still runs end to end with tiny counts. Only
completion and positive numbers are asserted, no timing thresholds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    needs("root", why="the benchmarks build network namespaces"),
]

ROOT = Path(__file__).resolve().parents[2]



@pytest.mark.interop
@needs("strongswan", why="the charon side of the comparison")
def test_mediated_setup_smoke(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("mediated_setup")
    bench.cleanup_orphans()
    results = [bench.measure(d, "0", 2, 10.0, False) for d in ("charon", "ours")]
    for r in results:
        assert r.times, r.failures
        assert r.median_ms is not None and r.median_ms > 0, r
    lines = bench.comparison(results)
    assert len(lines) == 2 and "0ms" in lines[1], lines

