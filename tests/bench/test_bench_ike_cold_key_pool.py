"""bench/ike_cold.py --key-pool: a responder's KeyPool alone (an X25519 pair taken and the refill per wake-up,
made as live) under callgrind from cold caches; one line per side and round with instructions and LL misses
per key pair taken."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]


@needs("valgrind", why="the key pool runs under callgrind")
def test_key_pool_cost_per_pair_is_reported() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "ike_cold.py"), "--key-pool", "8"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = re.search(r"round 1 ours: (\d+) instructions, (\d+) LL misses per X25519 key pair taken \(8 wake-ups\)",
                  p.stdout)
    assert m is not None, p.stdout
    assert int(m.group(1)) > 100_000  # an X25519 key pair (a scalar multiplication) at least: one batch of 8 made
    assert int(m.group(2)) > 0  # from cold caches
