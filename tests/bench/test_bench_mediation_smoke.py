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
        # every measured setup's CPU time of the three daemons was read (the daemons' processes found)
        assert len(r.cpu) == len(r.times) and all(c > 0 for c in r.cpu), r.cpu
    lines = bench.comparison(results)
    assert len(lines) == 2 and "0ms" in lines[1], lines


def test_cpu_ns_counts_every_thread_and_nothing_for_a_process_gone(load_bench: Callable[[str], ModuleType]) -> None:
    import os
    import threading

    bench = load_bench("mediated_setup")
    me = os.getpid()
    worked, done = threading.Event(), threading.Event()

    def work() -> None:
        sum(range(2_000_000))  # time on a CPU of this thread's own
        worked.set()
        done.wait()

    t = threading.Thread(target=work)
    t.start()
    try:
        assert worked.wait(60)
        assert t.native_id is not None

        def on_cpu(tid: int) -> int:
            return int(Path(f"/proc/{me}/task/{tid}/schedstat").read_text().split()[0])

        other = on_cpu(t.native_id)  # it waits now: its figure stays
        main = on_cpu(me)
        assert bench.cpu_ns([me]) >= main + other and other > 0
    finally:
        done.set()
        t.join()
    assert bench.cpu_ns([2**22 + 1]) == 0  # above pid_max's ceiling: no such process
