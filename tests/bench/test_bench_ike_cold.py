"""bench/ike_cold.py: a handful of charon initiator IKE_SAs recorded, replayed under callgrind by this tree
and by an older one; the report holds instructions and simulated last-level cache misses per datagram for
both trees, the shares per object group, and the note saying what it measures."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_run import figures, run_quick

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="the recording: a strongSwan charon initiator in network namespaces"),
    needs("valgrind", why="the replay runs under callgrind"),
]

BEFORE = "521e634"  # an older commit: the before side replays another source tree


def test_cold_replay_reports_both_trees(tmp_path: Path) -> None:
    doc = run_quick("ike_cold", tmp_path, "--auth", "psk", "--before", BEFORE, "--entry-points", "5", timeout=600)
    figs = figures(doc)
    ours, before = figs["ike_cold_psk_instructions"], figs["ike_cold_psk_instructions_before"]
    for f in (ours, before):
        assert f["ours"]["unit"] == "instructions" and f["ours"]["median"] > 10_000  # a datagram's work, at least
        shares = f["shares"]
        assert abs(sum(s["instructions"] for s in shares.values()) - 1) < 0.01
        assert shares["python"]["instructions"] > 0.05
        assert shares["cryptography (bundled OpenSSL libcrypto)"]["instructions"] > 0.01
    for key in ("ll_misses", "ll_misses_instr", "ll_misses_data"):
        m, mb = figs[f"ike_cold_psk_{key}"], figs[f"ike_cold_psk_{key}_before"]
        assert m["ours"]["median"] > 0 and mb["ours"]["median"] > 0
        assert m["ratio"] is not None and BEFORE in " ".join(m["differences"])
    # cold: every datagram misses the simulated LL cache at least a few hundred times (code and data)
    assert figs["ike_cold_psk_ll_misses"]["ours"]["median"] > 200
    # two trees: the same datagrams give different instruction counts
    assert ours["ours"]["median"] != before["ours"]["median"]
    # the calls into cryptography, inclusive: the key exchange's among them, with its OpenSSL work below it
    entry = ours["entry_points"]
    assert entry["X25519PrivateKey.exchange"]["instructions"] > 10_000
    assert entry["x25519.from_public_bytes"]["instructions"] > 0  # a module-level function
    assert all(v["ll_misses"] >= 0 for v in entry.values())
    text = (tmp_path / "ike_cold.txt").read_text()
    assert "cryptography calls by LL misses per datagram (inclusive" in text
    assert f"before {BEFORE}" in text and "not measure" in text and "simulated" in text
    assert any("proxy for the cold wake-up cost" in n for n in doc["notes"])
