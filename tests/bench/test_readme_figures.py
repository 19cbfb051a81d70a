"""README.md's Figures table is generated from bench/results/*.json: it fails when they disagree (run
`bench/readme_table.py --write` after `bench/run_all`), and the generator's write/check cycle works."""

from __future__ import annotations

import json
from pathlib import Path

from bench_run import ROOT, readme_table, results_io


def test_readme_figures_match_the_results() -> None:
    docs = readme_table.load_results(results_io.RESULTS)  # raises on a results file of the wrong shape
    _, current, _ = readme_table.split_readme((ROOT / "README.md").read_text())
    assert current == readme_table.section(docs), \
        "README.md's figures differ from bench/results/*.json: run bench/readme_table.py --write"
    assert not any(d["header"]["quick"] for d in docs), "a --quick smoke run in bench/results/"


def _doc(tmp: Path) -> None:
    h = results_io.finish_header(results_io.start_header(["--rounds", "3"], script="bench/demo.py"), False, 3)
    figs = [results_io.figure("t", "setup | time", results_io.sample([3.0, 1.0, 2.0], "ms"),
                              results_io.sample([4.0, 4.0, 5.0], "ms"), differences=["charon waits 1000 ms"]),
            results_io.figure("h", "hangs", results_io.count(0, 200, "hangs"), results_io.count(2, 200, "hangs")),
            results_io.figure("x", "detail", results_io.sample([1.0], "s"), readme=False)]
    results_io.write_results(tmp / "demo.txt", "demo", h, figs)


def test_generator_write_then_check(tmp_path: Path) -> None:
    _doc(tmp_path)
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert doc["figures"][0]["ratio"] == 0.5 and doc["figures"][1]["ratio"] is None
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Figures\n\n{readme_table.BEGIN}\nold\n{readme_table.END}\n\n## Tests\n")
    args = ["--results", str(tmp_path), "--readme", str(readme)]
    assert readme_table.main([*args, "--check"]) == 1
    assert readme_table.main([*args, "--write"]) == 0
    assert readme_table.main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Figures\n\n") and text.endswith("\n\n## Tests\n")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "demo.txt" in ln]
    assert len(rows) == 2  # the detail figure is not a README row
    assert rows[0].startswith("| setup \\| time | 2 ms (1-3, n=3) | 4 ms (4-5, n=3) | 0.50x (lower is better) | "
                              "charon waits 1000 ms |")
    assert "| 0 of 200 hangs | 2 of 200 hangs |" in rows[1]


def test_generator_rejects_a_wrong_shape(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 1, "bench": "bad", "header": {}, "figures": [{}]}))
    assert readme_table.main(["--results", str(tmp_path)]) == 2
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    (tmp_path / "bad.json").unlink()
    assert readme_table.main(["--results", str(tmp_path), "--readme", str(readme), "--check"]) == 2
