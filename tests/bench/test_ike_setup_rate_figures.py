"""bench/ike_setup_rate.py's capacity figures from results (no measurement): a paired batch gives the README's
setup_capacity_w2_* figure, the sequential rounds keep theirs under another key; without pairs the
sequential figure keeps the README key (bench/readme_table.py reads the figures marked readme)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any


def _result(bench: ModuleType, impl: str, cpu: float, workers: list[float] | None = None) -> Any:
    return bench.Result(impl, "psk", 1000, 1000, 1050, 1.0, cpu, 2800.0, 0.1, 1, workers or [], (10, 5, 0))


def test_paired_capacity_is_the_readme_figure(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_setup_rate")
    res = [
        _result(bench, "ours", 0.25),
        _result(bench, "ours-w2", 0.3, [0.15, 0.16]),
        _result(bench, "pair-w1", 0.30),
        _result(bench, "pair-w2", 0.31, [0.155, 0.16]),
    ]
    figs = {f["key"]: f for f in bench.figures_of(res, 32)}
    paired, seq = figs["setup_capacity_w2_psk"], figs["setup_capacity_w2_psk_sequential"]
    assert paired["readme"] and not seq["readme"]
    # (1000 / 0.16) / (1000 / 0.30) = 1.875; (1000 / 0.16) / (1000 / 0.25) = 1.5625
    assert paired["ours"]["median"] == 1.88 and seq["ours"]["median"] == 1.56
    assert any("paired" in d for d in paired["differences"])
    assert any("busiest worker's share of the workers' CPU: 0.508" in d for d in paired["differences"])
    assert figs["setup_cpu_psk"]["readme"] and figs["setup_cpu_psk"]["ours"]["median"] == 0.25


def test_without_pairs_the_sequential_figure_keeps_the_key(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_setup_rate")
    res = [_result(bench, "ours", 0.25), _result(bench, "ours-w2", 0.3, [0.15, 0.16])]
    figs = {f["key"]: f for f in bench.figures_of(res, 32, "engine")}
    assert figs["setup_capacity_w2_psk"]["readme"] and "setup_capacity_w2_psk_sequential" not in figs
    assert any("sans-IO Engine" in d for d in figs["setup_capacity_w2_psk"]["differences"])


def test_autogroup_weight_of_n_workers(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("ike_setup_rate")
    assert [bench.autogroup_nice(n) for n in (1, 2, 3, 4)] == [0, -3, -5, -6]
    for n in (2, 3, 4):  # within 5 % of n processes' weight
        assert abs(bench.NICE_WEIGHTS[bench.autogroup_nice(n)] / 1024 - n) / n < 0.05
