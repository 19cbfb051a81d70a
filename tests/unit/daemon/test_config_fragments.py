"""[daemon] frag_max_per_sa / frag_max_total: loaded, checked, and the defaults match the engine's."""

from __future__ import annotations

from pathlib import Path

import pytest

from core_ike.daemon.config import DaemonSettings, load
from core_ike.errors import LocalError
from core_ike.ike.engine import EngineConfig


def test_defaults_match_the_engine() -> None:
    st, eng = DaemonSettings(), EngineConfig()
    assert (st.frag_max_per_sa, st.frag_max_total) == (eng.frag_max_per_sa, eng.frag_max_total)


def test_values_load(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text("[daemon]\nfrag_max_per_sa = 131072\nfrag_max_total = 8388608\n")
    st = load(p).settings
    assert (st.frag_max_per_sa, st.frag_max_total) == (131072, 8388608)


@pytest.mark.parametrize("value", ["1000", '"2M"', "true"])
def test_bad_values_name_the_key(tmp_path: Path, value: str) -> None:
    p = tmp_path / "t.toml"
    p.write_text(f"[daemon]\nfrag_max_per_sa = {value}\n")
    with pytest.raises(LocalError, match=r"^\[daemon\] frag_max_per_sa: expected an integer >= 65536, got "):
        load(p)
