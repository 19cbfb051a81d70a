"""ipsec.conf auto=route against a real charon (docs/gateway.md, "Trap policies"): our iked on alice
loads a routed conn and negotiates nothing until traffic for the conn's selectors leaves alice; the
first ping starts the IKE_SA and CHILD_SA with charon on bob (kernel-libipsec), the next pings pass
through the tunnel. After `ikeme-ipsec down` the trap is still there and traffic starts the tunnel
again; `ikeme-ipsec unroute` / `route` remove and reinstall it."""

from __future__ import annotations

import re

import pytest

from gateway.ipsec_cmd import main as ipsec_cmd
from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from scenarios.lab.tunnels import Tunnel, charon_psk_conf
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="a strongSwan charon responder in network namespaces"),
]

A, B = "192.0.2.1", "192.0.2.2"  # alice (our iked), bob (charon)
A_IN, B_IN = "10.10.1.1", "10.10.2.1"  # inner addresses on lo
PSK = "route-interop-secret-0123456789"

IPSEC_CONF = f"""
conn net
    left={A}
    leftid=alice@lab
    leftsubnet={A_IN}/32
    right={B}
    rightid=bob@lab
    rightsubnet={B_IN}/32
    authby=secret
    ike=aes128gcm16-prfsha256-x25519
    esp=aes128gcm16
    auto=route
"""

TOML = f"""[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
ipsec_conf = "@DIR@/ipsec.conf"
ipsec_secrets = "@DIR@/ipsec.secrets"
"""


def ipsec(iked: Iked, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert ipsec_cmd(["-s", iked.ctl_path, *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def acquires(iked: Iked) -> list[str]:
    return re.findall(r"acquire for net\{net\} \((\S+) -> (\S+), protocol 1\): initiating", iked.log_text())


def test_traffic_starts_the_tunnel_to_charon(two_hosts_per_module: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = two_hosts_per_module
    charon = Charon(lab, "bob", name="charon-route",
                    conf=charon_psk_conf(Tunnel(B, A, "bob@lab", "alice@lab", B_IN, A_IN, PSK)))
    iked = Iked(lab, "alice", TOML, name="iked-route",
                files={"ipsec.conf": IPSEC_CONF, "ipsec.secrets": f'alice@lab bob@lab : PSK "{PSK}"\n'})
    try:
        charon.start()
        iked.start()
        out = ipsec(iked, capsys, "status")
        assert "Routed Connections:\n         net{1}:  ROUTED, TUNNEL, reqid 1073741825\n" \
               f"         net{{1}}:   {A_IN}/32 === {B_IN}/32\n" in out
        assert "Security Associations (0 up, 0 connecting):" in out and not charon.list_sas()
        for round_ in (1, 2):
            # the first packet meets the trap: dropped, and the connection starts
            lab.ping("alice", B_IN, source=A_IN, count=1, wait=1)
            child = charon.wait_child("net", timeout=30)
            assert acquires(iked) == [(A_IN, B_IN)] * round_, iked.log_tail()
            sent, received, text = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
            assert (sent, received) == (3, 3), text + "\n" + iked.log_tail()
            (sa,) = iked.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"])
            assert sa["name"] == "net" and sa["child-sas"][0]["spi-in"] == child["spi-out"]
            assert sa["initiator"]  # we initiated, on the acquire; charon responded
            assert ipsec(iked, capsys, "down", "net").startswith("closed")
            iked.wait_sas(lambda s: not s)
            wait_for(lambda: not charon.list_sas(), 10, what="charon's SAs gone after the DELETE")
        # unroute: no trap listed any more; route: back
        assert ipsec(iked, capsys, "unroute", "net") == "configuration 'net' unrouted\n"
        assert "Routed Connections" not in ipsec(iked, capsys, "status")
        assert ipsec_cmd(["-s", iked.ctl_path, "unroute", "net"]) == 1
        assert "not found or not routed" in capsys.readouterr().err
        assert ipsec(iked, capsys, "route", "net") == "'net' routed\n"
        assert "net{1}:  ROUTED" in ipsec(iked, capsys, "statusall")
        lab.ping("alice", B_IN, source=A_IN, count=1, wait=1)
        charon.wait_child("net", timeout=30)
        assert len(acquires(iked)) == 3
    finally:
        iked.stop()
        charon.stop()
