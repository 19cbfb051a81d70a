"""Smoke test: bench/mediated_setup.py (ours and charon) and bench/registry_scale.py still run end to end
with tiny counts. Only completion and positive numbers are asserted, no timing thresholds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    needs("root", why="the benchmarks build network namespaces"),
]

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.interop
@needs("strongswan", why="the charon side of the comparison")
def test_mediated_setup_smoke() -> None:
    bench = _load("mediated_setup")
    bench.cleanup_orphans()
    results = [bench.measure(d, "0", 2, 10.0, False) for d in ("charon", "ours")]
    for r in results:
        assert r.times, r.failures
        assert r.median_ms is not None and r.median_ms > 0, r
    lines = bench.comparison(results)
    assert len(lines) == 2 and "0ms" in lines[1], lines


def test_registry_scale_smoke(tmp_path: Path) -> None:
    out = tmp_path / "registry_scale.txt"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "registry_scale.py"), "--peers", "200",
                        "--measure", "1", "--keepalive", "2", "--dpd", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line.split() for line in out.read_text().splitlines() if line.strip().startswith("200 ")]
    assert rows, out.read_text()
    peers, failed, reg_rate, rss_mib, kib_per_peer = rows[0][:5]
    assert int(peers) == 200 and int(failed) == 0
    assert float(reg_rate) > 0 and float(rss_mib) > 0 and float(kib_per_peer) > 0
    ka_rate, dpd_rate = float(rows[0][6]), float(rows[0][8])
    assert ka_rate > 0 and dpd_rate > 0, rows[0]
