"""Smoke runs (--quick) of the benches that measure iked's workers and its CPU per IKE_SA: the shared
results shape, every side measured, the figures the README takes (no timing thresholds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_run import figures, run_quick

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="network namespaces and a strongSwan charon"),
]


def test_setup_rate_with_two_workers(tmp_path: Path) -> None:
    doc = run_quick("ike_setup_rate", tmp_path, "--impl", "ours,ours-w2", "--auth", "psk", timeout=300)
    figs = figures(doc)
    cap = figs["setup_capacity_w2_psk"]
    assert cap["readme"] and cap["ours"]["n"] == 1 and cap["ours"]["median"] > 0
    assert figs["setup_cpu_psk"]["ours"]["median"] > 0 and figs["setup_cpu_psk"]["charon"] is None
    assert "ours-w2" in (tmp_path / "ike_setup_rate.txt").read_text()


def test_charon_initiator_against_both_responders(tmp_path: Path) -> None:
    doc = run_quick("charon_initiator", tmp_path, "--auth", "psk", "--before", "HEAD", timeout=600)
    f = figures(doc)["charon_initiator_cpu_psk"]
    assert f["readme"] and f["ours"]["n"] == 1 and f["charon"]["n"] == 1 and f["ratio"] is not None
    # the engine alone: the recorded datagrams replayed by this tree and by the --before one
    assert any("the engine alone, A/B" in d and "this tree / HEAD" in d for d in f["differences"])
    assert "failed" not in (tmp_path / "charon_initiator.txt").read_text()
    # both daemons again at their default log levels (ours info, charon 1), interleaved in the same run
    d = figures(doc)["charon_initiator_cpu_psk_default_logging"]
    assert d["ours"]["n"] == 1 and d["charon"]["n"] == 1 and d["ratio"] is not None
    # and --before's iked at info beside ours at info; the log's cost at info in the replay, both trees
    assert any(x.startswith("ours at HEAD") and "this tree / HEAD" in x for x in d["differences"])
    assert any(x.startswith("what the log at info") and "this tree / HEAD" in x for x in f["differences"])
    # --before in the child shape too: HEAD's iked with this tree's child configuration, every CHILD_SA installed
    c = figures(doc)["charon_initiator_cpu_psk_child"]
    assert c["child_sas_held"]["before"] == [[24, 24]]  # --quick: 4 warmup IKE_SAs, then 20
    assert any(d.startswith("ours at HEAD") and "this tree / HEAD" in d for d in c["differences"])
    assert any(d.startswith("ours at HEAD") and "this tree / HEAD" in d for d in f["differences"])


def test_flood_with_two_workers(tmp_path: Path) -> None:
    doc = run_quick("ike_flood", tmp_path, "--workers", "2", "--legit", "ours", timeout=300)
    figs = figures(doc)
    legit = figs["flood_legit_ours_w2"]
    assert legit["readme"] and legit["ours"]["of"] == 3
    assert figs["flood_cookies_ours_w2"]["ours"]["median"] > 0  # both workers' COOKIEs summed over the flood
