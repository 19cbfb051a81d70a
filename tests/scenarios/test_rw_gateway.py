"""`scenarios/run rw-gateway` to a PASSED verdict: our gateway moon with its configuration written in SQL
through the SA manager (lighttpd + medmgr-sa), then read from the seed's ipsec.conf; road warriors carol
and dave (strongSwan charon, PSK) and erin (ours) each get a virtual IP from the pool, ping moon's subnet
from it (erin's iked puts hers on its TUN device while the IKE_SA is up), are listed and terminated by the
SA manager and get the same address after reconnecting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, pytest.mark.interop,
              needs("root", "strongswan", "lighttpd", why="charon road warriors and the SA manager in namespaces")]


def test_rw_gateway_scenario() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "rw-gateway"], capture_output=True,
                         text=True, timeout=180, cwd=ROOT)  # about 40 s alone; up to 142 s seen at load 15
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "rw-gateway: PASSED" in res.stdout and "FAIL " not in res.stdout, out
    for who in ("carol", "dave", "erin"):
        # both halves: from the SQL pool and from ipsec.conf's rightsourceip, and back after the reconnect
        assert len(re.findall(rf"PASS  {who} got (10\.3\.0\.\d+) from 10\.3\.0\.x and pinged 10\.1\.0\.1 from it \(3/3\)",
                              res.stdout)) == 4, out
        assert res.stdout.count(f"PASS  {who} got the same address back") == 2, out
    # erin's iked configures the virtual IP on its TUN device while up, and removes it with the IKE_SA
    assert len(re.findall(r"PASS  erin's iked put her virtual IP 10\.3\.0\.\d+ on its TUN device ipsec0",
                          res.stdout)) == 4, out
    assert len(re.findall(r"PASS  erin's virtual IP 10\.3\.0\.\d+ left ipsec0 with her IKE_SA", res.stdout)) == 2, out
    assert res.stdout.count("PASS  terminate carol's CHILD_SA from the SA manager") == 2, out
    assert "PASS  iked loaded connection rw and pool rw from the database without a restart" in res.stdout, out
