"""Smoke test: bench/ike_setup_rate.py still runs end to end with tiny counts (no timing thresholds)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]




def test_ike_setup_rate_smoke(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_setup_rate")
    n, warmup = 20, 4
    results = bench.run_bench(bench.Load(count=n, inflight=8, warmup=warmup, timeout=60.0), source_ips=4)
    assert {(r.impl, r.auth) for r in results} == {(i, a) for i in ("ours", "charon") for a in ("psk", "rsa")}
    for r in results:
        assert r.established == n, r
        assert r.held == n + warmup, r
        assert r.seconds > 0 and r.rate > 0 and r.driver_cpu > 0, r
        assert r.resp_cpu >= 0, r
    text = bench.table(results, 8, 1, warmup)
    assert "ours/ch." in text and "setups/s" in text
