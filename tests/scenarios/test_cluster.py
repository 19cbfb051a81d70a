"""``scenarios/run cluster`` to a PASSED verdict: three of our mediation servers on Redis in network
namespaces; alice and bob behind two NATs at different servers get a direct tunnel, two charons at
different servers get mediated, server 1 is killed and alice registers at the next server within 30 s
and gets her tunnel again, server 1 restarts without duplicate registrations; then both NATs symmetric,
alice at server 1 and bob at server 2: the tunnel runs through server 1's data relay, ping through it;
then a port-restricted and a random symmetric NAT at two servers: their NAT behaviours cross the cluster,
they probe many ports and the tunnel goes direct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, needs("root", "redis", "strongswan", why="the cluster scenario")]


def test_cluster_scenario() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scenarios" / "run"), "cluster"], capture_output=True,
                         text=True, timeout=360, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "cluster: PASSED" in res.stdout and "FAIL " not in res.stdout, out
    for check in ("PASS  the mediated SA runs between the two NATs' public addresses",
                  "PASS  dave's and erin's CHILD_SA agree on the SPIs (mediated across ms1 and ms3)",
                  "PASS  alice registered at ms2", "PASS  after the move: ping alice->bob 3/3",
                  "PASS  after ms1's restart alice and bob are each registered once",
                  "PASS  both mediated SAs run to ms1's relay", "PASS  ping through ms1's relay: alice->bob 3/3",
                  "PASS  ms1 relays both ways for alice (its peer) and bob (ms2's peer",
                  "PASS  ms2 added no relay of its own for the pair",
                  "PASS  alice sprays and bob opens extra sockets: each got the other's NAT behaviour",
                  "PASS  the mediated SA runs between the NATs' public addresses, not through ms1's relay",
                  "PASS  ping direct: alice->bob 3/3"):
        assert check in res.stdout, out
    assert "forwarding ME_CONNECT from 'alice@med' to 'bob@med' at server ms2" in res.stdout, out
