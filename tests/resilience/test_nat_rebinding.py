"""The NAT in front of a peer forgets its mapping mid-tunnel and picks another public port (conntrack
flushed, masquerade moved to another port range), as home routers do after a reboot or a timeout.

The peer without NAT sees authenticated ESP from the new port, follows it at once (its ESP and IKE
go to the new mapping) and confirms with a liveness check (RFC 7296 2.23; the data plane reports the
mapping like the kernel's XFRM_MSG_MAPPING). Ping through the tunnel resumes both ways.
"""

from __future__ import annotations

import pytest

from scenarios.lab import Lab
from scenarios.lab.iked import Iked
from scenarios.lab.topologies import CAROL, NAT_RULESET
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="daemons behind a NAT in network namespaces")]

A_IN, C_IN = "10.1.0.2", "10.3.0.1"
SECRET = """[[secrets.ike]]
id = ["alice@example.org", "carol@example.org"]
secret = "rebinding-test-secret-0123456789"
"""


def conf(me: str, other: str, local_ts: str, remote_ts: str, remote: str = "") -> str:
    return f"""[daemon]
control = "@CTL@"
dataplane = "userspace"
{SECRET}
[connections.tun]
{remote}local = {{ auth = "psk", id = "{me}@example.org" }}
remote = {{ auth = "psk", id = "{other}@example.org" }}
[connections.tun.children.net]
local_ts = ["{local_ts}/32"]
remote_ts = ["{remote_ts}/32"]
"""


def test_tunnel_follows_a_new_nat_mapping(nat_lab_per_test: Lab) -> None:
    lab = nat_lab_per_test
    lab.addr("carol", "lo", f"{C_IN}/32")
    carol = Iked(lab, "carol", conf("carol", "alice", C_IN, A_IN)).start()
    alice = Iked(lab, "alice", conf("alice", "carol", A_IN, C_IN, f'remote_addrs = ["{CAROL}"]\n')).start()
    assert alice.up("tun")["ok"]
    assert lab.ping("alice", C_IN, source=A_IN, count=2, interval=0.1)[1] == 2
    (before,) = carol.list_sas()
    assert before["remote-host"] == "203.0.113.1"
    old_port = before["remote-port"]

    # natA reboots its NAT: no conntrack entries, another public port range
    moved = 'oifname "wan0" meta l4proto udp masquerade to :20000-29999\n    oifname "wan0" masquerade'
    lab.nft("natA", "flush ruleset\n" + NAT_RULESET.format(rule=moved))
    lab.flush_conntrack(["natA"])

    _sent, received, out = lab.ping("alice", C_IN, source=A_IN, count=5, interval=0.2, wait=1.0)
    assert received >= 3, out  # the first reply may still go to the old mapping
    (after,) = carol.list_sas()
    assert after["uniqueid"] == before["uniqueid"]  # the same IKE_SA, moved
    assert 20000 <= after["remote-port"] <= 29999 and after["remote-port"] != old_port
    log = carol.log_text()
    assert "NAT mapping of the peer changed to 203.0.113.1[" in log, log[-2000:]
    # the liveness check at the new mapping was answered (authenticated), the SA stays
    carol.wait_state(lambda: "parsed INFORMATIONAL response" in carol.log_text().split("NAT mapping of the peer")[-1],
                     10, "carol's liveness check answered")
    # the other direction too, carol first
    assert lab.ping("carol", A_IN, source=C_IN, count=3, interval=0.1)[1] == 3
    alice.stop()
    carol.stop()
