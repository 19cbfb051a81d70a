"""Smoke test: bench/ike_setup_rate.py still runs end to end with tiny counts (no timing thresholds)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ike_setup_rate.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ike_setup_rate", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ike_setup_rate"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ike_setup_rate_smoke() -> None:
    bench = _load()
    n, warmup = 20, 4
    results = bench.run_bench(count=n, inflight=8, warmup=warmup, source_ips=4, timeout=60.0)
    assert {(r.impl, r.auth) for r in results} == {(i, a) for i in ("ours", "charon") for a in ("psk", "rsa")}
    for r in results:
        assert r.established == n, r
        assert r.held == n + warmup, r
        assert r.seconds > 0 and r.rate > 0 and r.driver_cpu > 0, r
        assert r.resp_cpu >= 0, r
    text = bench.table(results, 8, 1, warmup)
    assert "ours/ch." in text and "setups/s" in text
