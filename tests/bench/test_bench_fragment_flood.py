"""bench/fragment_flood.py, short and bounded: the engine's accounted reassembly octets never exceed the caps
(asserted on the accounting and its peak, not on timing), and the RSS stays far below what the sets weigh."""

from __future__ import annotations

import gc
from collections.abc import Callable
from types import ModuleType

SET = 62 * 1024



def test_sets_for_other_message_ids_cost_nothing(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("fragment_flood")
    flood = bench.Flood(1, {})
    sa, vsa = flood.pairs[0]
    gc.collect()
    rss0 = bench.rss_mib()
    sent = 0
    for mid in range(1, 1001):  # 1000 sets of 62 KiB = 60 MiB of fragments if they were kept
        sent += flood.one_set(sa, vsa, mid, SET, 2100)
    gc.collect()
    grown = bench.rss_mib() - rss0
    eng = flood.victim
    held = flood.held()
    assert held["messages"] == 1 and held["plaintext"] < SET  # request 1, the one expected, in its window
    assert eng.frag_budget.peak == eng.frag_budget.used <= eng.cfg.frag_max_per_sa
    assert eng.counters["drop-fragment-window"] == sent - sent // 1000
    assert grown < 30, f"RSS grew {grown:.1f} MiB"  # before the fix: about 60 MiB
    flood.expire()
    assert eng.frag_budget.used == 0 and eng.half_open == 0


def test_many_half_open_sas_stay_within_the_budget(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("fragment_flood")
    total, per_sa = 4 * 1024 * 1024, 256 * 1024
    flood = bench.Flood(150, {"frag_max_total": total, "frag_max_per_sa": per_sa})
    eng = flood.victim
    for i in range(300):  # 150 SAs x 62 KiB, twice, each at the Message ID it expects: ~9 MiB offered
        sa, vsa = flood.pairs[i % len(flood.pairs)]
        flood.one_set(sa, vsa, vsa.peer_mid, SET, 2100)
        assert eng.frag_budget.used <= total
    assert eng.frag_budget.peak <= total
    assert eng.frag_budget.used > total - 2 * SET  # full, not emptied
    assert eng.counters["drop-fragment-memory"] > 0
    held = [bench.receiver(vsa).reassembler for _, vsa in flood.pairs if bench.receiver(vsa) is not None]
    assert all(r.peak <= per_sa for r in held)
    assert eng.frag_budget.used == sum(r.used for r in held)  # the budget is the sum of what the SAs hold
    flood.expire()
    assert eng.frag_budget.used == 0 and len(eng.frag_budget) == 0 and eng.half_open == 0
