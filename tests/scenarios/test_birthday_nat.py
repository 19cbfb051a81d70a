"""Many-port probing through real nftables NATs (core_ike/me/birthday.py, scenarios/nat-matrix): one peer
behind a port-restricted NAT, the other behind a symmetric NAT with random ports (`masquerade
fully-random`), each way round (alice initiates: once she is the prober, once the one with the extra
sockets, whose IKE_SA then leaves from one of them). Both measure their NATs (RFC 5780), the random side
opens extra sockets, the port-restricted side probes random ports of its public address, and the tunnel
runs directly (not through the relay the server offers) over the socket that met, a ping through it
included (`NAT_MATRIX_CELLS=pr-symr,symr-pr scenarios/run nat-matrix --quick`: checks only, nothing is
written to bench/results)."""

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


def test_random_symmetric_and_port_restricted_go_direct_by_many_port_probing() -> None:
    env = {**os.environ, "NAT_MATRIX_CELLS": "pr-symr,symr-pr"}
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "nat-matrix", "--quick"],
                         capture_output=True, text=True, timeout=150, cwd=ROOT, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "nat-matrix: PASSED" in res.stdout, out
    rows = {line.strip().split("  ")[0]: line for line in res.stdout.splitlines() if " x " in line and "pkts" in line}
    assert set(rows) == {"port-restr x sym rand", "sym rand x port-restr"}, out
    for label, (nat_a, nat_b) in {"port-restr x sym rand": ("EIM/APDF", "APDM/APDF rand"),
                                  "sym rand x port-restr": ("APDM/APDF rand", "EIM/APDF")}.items():
        row = rows[label]
        assert re.search(rf"{re.escape(nat_a)}\s+{re.escape(nat_b)}", row), row  # both NATs as built, as measured
        # direct to bob's NAT (not the relay at carol): on a port his random NAT gave one of his extra
        # sockets, or on his NAT-T port 4500 when he is the port-restricted one
        m = re.search(r"direct \(203\.0\.113\.2\[(\d+)\]\), [\d.]+ ms, (\d+) pkts", row)
        assert m is not None, row
        if label.startswith("sym rand"):
            assert m.group(1) == "4500", row
        # the bounds: 256 extra sockets twice at most, 2048 probes at most, and the usual checks and IKE
        assert int(m.group(2)) < 2 * 256 + 2048 + 200, row
