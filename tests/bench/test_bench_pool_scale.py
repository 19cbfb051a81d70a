"""Smoke run of bench/pool_scale.py --quick: the shared results shape and every figure measured (no timing
assertions)."""

from __future__ import annotations

from pathlib import Path

from bench_run import figures, run_quick


def test_pool_scale_quick(tmp_path: Path) -> None:
    doc = run_quick("pool_scale", tmp_path)
    figs = figures(doc)
    for key in ("db_pool_add", "db_pool_load", "db_pool_memory", "db_pool_alloc", "db_pool_realloc",
                "db_pool_flush", "memory_pool_alloc", "gateway_memory_pool_alloc"):
        assert figs[key]["ours"]["n"] == 1 and figs[key]["ours"]["median"] > 0, key
        # the README shows one of them: new leases per second from the database pool
        assert figs[key]["readme"] is (key == "db_pool_alloc"), key
