"""Many-port probing through real nftables NATs (core_ike/me/birthday.py, scenarios/nat-matrix): alice
behind a port-restricted NAT, bob behind a symmetric NAT with random ports (`masquerade fully-random`);
both measure their NATs (RFC 5780), bob opens extra sockets, alice probes random ports of bob's public
address, and the tunnel runs directly (not through the relay the server offers) over the socket that met,
a ping through it included (`NAT_MATRIX_CELLS=pr-symr scenarios/run nat-matrix --quick`: checks only,
nothing is written to bench/results)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, needs("root", why="NAT labs with our daemons in network namespaces")]


def test_random_symmetric_x_port_restricted_goes_direct_by_many_port_probing() -> None:
    env = {**os.environ, "NAT_MATRIX_CELLS": "pr-symr"}
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "nat-matrix", "--quick"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "nat-matrix: PASSED" in res.stdout, out
    rows = [line for line in res.stdout.splitlines() if line.strip().startswith("port-restr x sym rand") and "pkts" in line]
    assert len(rows) == 1, out
    row = rows[0]
    assert "EIM/APDF" in row and "APDM/APDF rand" in row, row  # both NATs as built, as measured
    # direct to bob's NAT on a port it gave one of bob's extra sockets (not 4500: bob's NAT-T socket's
    # mappings are random too, and not the relay at carol)
    m = re.search(r"direct \(203\.0\.113\.2\[(\d+)\]\), [\d.]+ ms, (\d+) pkts", row)
    assert m is not None, row
    # the bounds: bob's 256 extra sockets twice at most, alice's 2048 probes at most, and the rest
    assert int(m.group(2)) < 2 * 256 + 2048 + 200, row
