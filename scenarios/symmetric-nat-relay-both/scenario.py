"""symmetric-nat-relay-both: alice AND bob behind symmetric NATs: connected through carol's data relay.

The same run as `symmetric-nat-relay` with natA symmetric too (no direct path at all: only
the relay works, docs/nat-lab.md §4).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scenarios.lab.story import Story

TITLE = "ours: alice and bob both behind symmetric NATs: the connection comes up through carol's data relay"

_spec = importlib.util.spec_from_file_location(
    "scenario_symmetric_nat_relay", Path(__file__).resolve().parents[1] / "symmetric-nat-relay" / "scenario.py")
assert _spec is not None and _spec.loader is not None
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def run(story: Story) -> None:
    _base.run(story, nat_a="symmetric")
