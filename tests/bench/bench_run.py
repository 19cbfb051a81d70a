"""Helpers for the bench smoke tests: run a bench script with --quick and check the shared results shape."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import readme_table  # noqa: E402
import results_io  # noqa: E402


def run_quick(name: str, tmp: Path, *extra: str, timeout: float = 240, ok_codes: tuple[int, ...] = (0,)
              ) -> dict[str, Any]:
    """bench/NAME.py --quick --out TMP/NAME.txt; returns NAME.json after checking its shape and the header,
    and that a run that passed left no lab directory behind (scenarios.lab.netns.Lab.close)."""
    out = tmp / f"{name}.txt"
    with subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode in ok_codes, stdout[-3000:] + stderr[-3000:]
    if proc.returncode == 0:
        assert labs_left(proc.pid) == [], stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    assert results_io.validate(doc) == [], doc
    assert doc["bench"] == name
    h = doc["header"]
    assert h["quick"] is True and h["rounds"] == 1
    assert h["machine"]["cpus"] >= 1 and h["commit"] != "?" and f"bench/{name}.py" in h["command"]
    assert len(h["load_before"]) == 3 and len(h["load_after"]) == 3
    text = out.read_text()
    assert "load average" in text and "commit:" in text and "figures" in text
    return doc


def labs_left(pid: int) -> list[str]:
    """The lab directories process ``pid`` made that are still there (named lab-lb<pid>x...,
    scenarios.lab.netns.Lab; the script re-executes itself under the venv in the same process)."""
    return sorted(d.name for d in Path(tempfile.gettempdir()).glob(f"lab-lb{pid}x*"))


def figures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in doc["figures"]}


def readme_rows(tmp: Path) -> list[str]:
    """The README rows generated from the results in ``tmp`` (every readme figure appears once)."""
    docs = readme_table.load_results(tmp)
    rows = readme_table.rows(docs)
    assert len(rows) == sum(1 for d in docs for f in d["figures"] if f["readme"])
    section = readme_table.section(docs)
    assert section.startswith(readme_table.BEGIN) and section.endswith(readme_table.END)
    return rows
