"""ipsec.conf auto=route against a real charon (docs/gateway.md, "Trap policies"): our iked on alice
loads a routed conn and negotiates nothing until traffic for the conn's selectors leaves alice; the
first ping starts the IKE_SA and CHILD_SA with charon on bob (kernel-libipsec), the next pings pass
through the tunnel. After `ikeme-ipsec down` the trap is still there and traffic starts the tunnel
again; `ikeme-ipsec unroute` / `route` remove and reinstall it; `ikectl status` lists the trap as well."""

from __future__ import annotations

import re
from typing import Any

import pytest

from core_ike.daemon.ctl import call
from gateway.ipsec_cmd import main as ipsec_cmd
from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf
from tests.guards import needs
from tests.ikedtoml import PskConn

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


def installed(sa: dict[str, Any]) -> bool:
    return any(c["state"] == "INSTALLED" for c in sa["child-sas"])


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
        (routed,) = call(iked.ctl_path, {"cmd": "status"})["routed"]  # `ikectl status`: the same trap
        assert (routed["name"], routed["local-ts"], routed["remote-ts"], routed["routed-by"]) == \
               ("net", [f"{A_IN}/32"], [f"{B_IN}/32"], "config")
        for round_ in (1, 2):
            # the first packet meets the trap: dropped, and the connection starts
            lab.ping("alice", B_IN, source=A_IN, count=1, wait=1)
            child = charon.wait_child("net", timeout=30)
            assert acquires(iked) == [(A_IN, B_IN)] * round_, iked.log_tail()
            # charon, the responder, installs its CHILD_SA before it answers; ours is in once the answer is
            # read: until then our pings would still meet the trap
            (sa,) = iked.wait_sas(lambda s: len(s) == 1 and installed(s[0]))
            sent, received, text = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
            assert (sent, received) == (3, 3), text + "\n" + iked.log_tail()
            assert sa["name"] == "net" and sa["child-sas"][0]["spi-in"] == child["spi-out"]
            assert sa["initiator"]  # we initiated, on the acquire; charon responded
            assert ipsec(iked, capsys, "down", "net").startswith("closed")
            iked.wait_sas(lambda s: not s)
            wait_daemons(lambda: not charon.list_sas(), 10, [charon], what="charon's SAs gone after the DELETE")
        # unroute: no trap listed any more; route: back
        assert ipsec(iked, capsys, "unroute", "net") == "configuration 'net' unrouted\n"
        assert "Routed Connections" not in ipsec(iked, capsys, "status")
        assert ipsec_cmd(["-s", iked.ctl_path, "unroute", "net"]) == 1
        assert "conn 'net' is not routed" in capsys.readouterr().err
        assert ipsec(iked, capsys, "route", "net") == "'net' routed\n"
        assert "net{1}:  ROUTED" in ipsec(iked, capsys, "statusall")
        lab.ping("alice", B_IN, source=A_IN, count=1, wait=1)
        charon.wait_child("net", timeout=30)
        assert len(acquires(iked)) == 3
    finally:
        iked.stop()
        charon.stop()


B_IN3 = "10.10.3.1"  # a second inner address on bob, in a range of its own CHILD_SA config


def _trap_toml(tun: str, conn_extra: str = "") -> str:
    """Plain iked (userspace data plane on `tun`), `start_action = "trap"`, 10.10.1.1/32 === 10.10.2.0/23."""
    return PskConn(A, B, "alice@lab", "bob@lab", PSK, local_ts=[f"{A_IN}/32"], remote_ts=["10.10.2.0/23"],
                   daemon=f'dataplane = "userspace"\ntun = "{tun}"', conn_extra=conn_extra,
                   child_extra='start_action = "trap"').toml()


TOML_TRAP = _trap_toml("ipsec1")

CHARON_TWO_RANGES = f"""connections {{
  net {{
    local_addrs = {B}
    remote_addrs = {A}
    proposals = aes128gcm16-prfsha256-x25519
    local {{
      auth = psk
      id = bob@lab
    }}
    remote {{
      auth = psk
      id = alice@lab
    }}
    children {{
      net2 {{
        local_ts = 10.10.2.0/24
        remote_ts = {A_IN}/32
        esp_proposals = aes128gcm16
      }}
      net3 {{
        local_ts = 10.10.3.0/24
        remote_ts = {A_IN}/32
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-1 {{
    id-1 = bob@lab
    id-2 = alice@lab
    secret = "{PSK}"
  }}
}}
"""


def test_iked_toml_trap_and_charon_narrows_to_the_pinged_range(two_hosts_per_module: Lab) -> None:
    """Plain iked, `start_action = "trap"` in its TOML file, 10.10.1.1 === 10.10.2.0/23; charon has two
    CHILD_SA configs, 10.10.2.0/24 first, then 10.10.3.0/24. A ping to 10.10.3.1 starts the CHILD_SA
    with the packet's own selectors first (RFC 7296 2.9): charon rates the leading selectors highest
    and picks net3, so the next pings pass (with net2 they would meet the trap's drop again)."""
    lab = two_hosts_per_module
    lab.addr("bob", "lo", f"{B_IN3}/32")
    charon = Charon(lab, "bob", name="charon-route2", conf=CHARON_TWO_RANGES)
    iked = Iked(lab, "alice", TOML_TRAP, name="iked-trap")
    try:
        charon.start()
        iked.start()
        iked.wait_log("trap policies installed", 10)
        assert not charon.list_sas()
        lab.ping("alice", B_IN3, source=A_IN, count=1, wait=1)
        child = charon.wait_child("net3", timeout=30)
        assert child["local-ts"] == ["10.10.3.0/24"], child
        log = iked.log_text()
        assert f"acquire for net{{net}} ({A_IN} -> {B_IN3}, protocol 1): initiating, first selectors " \
               f"{A_IN}/32[icmp] === {B_IN3}/32[icmp]" in log, iked.log_tail()
        (sa,) = iked.wait_sas(lambda s: len(s) == 1 and installed(s[0]))  # ours installed too (see above)
        sent, received, text = lab.ping("alice", B_IN3, source=A_IN, count=3, interval=0.05)
        assert (sent, received) == (3, 3), text + "\n" + iked.log_tail()
        assert sa["initiator"] and sa["child-sas"][0]["remote-ts"] == ["10.10.3.0/24"], sa
        assert [c["name"] for c in charon.child_sas()] == ["net3"]
    finally:
        iked.stop()
        charon.stop()
        lab.run("bob", ["ip", "addr", "del", f"{B_IN3}/32", "dev", "lo"], check=False)


TOML_RETRY = _trap_toml("ipsec2", "keyingtries = 0\nretransmit = { timeout = 0.3, base = 1.5, tries = 1 }")


def test_the_keying_try_after_a_trap_attempt_offers_the_packet_to_charon(two_hosts_per_module: Lab) -> None:
    """The same two ranges, charon not started yet: the ping's attempt fails, and the keying try that
    reaches charon once it runs asks for the trap's CHILD_SA with the packet's selectors first again
    (RFC 7296 2.9), so charon picks net3 (without them it takes its first config, net2)."""
    lab = two_hosts_per_module
    lab.addr("bob", "lo", f"{B_IN3}/32")
    charon = Charon(lab, "bob", name="charon-route3", conf=CHARON_TWO_RANGES)
    iked = Iked(lab, "alice", TOML_RETRY, name="iked-trap-retry")
    try:
        iked.start()
        iked.wait_log("trap policies installed", 10)
        lab.ping("alice", B_IN3, source=A_IN, count=1, wait=1)
        iked.wait_log("keying try 2 of unlimited for 'net'", 20)  # the attempt the ping started failed
        charon.start()
        child = charon.wait_child("net3", timeout=30)
        assert child["local-ts"] == ["10.10.3.0/24"], child
        assert f"keying try for net{{net}}: initiating, first selectors {A_IN}/32[icmp] === {B_IN3}/32[icmp]" \
               in iked.log_text(), iked.log_tail()
        (sa,) = iked.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"])
        assert sa["initiator"] and sa["child-sas"][0]["remote-ts"] == ["10.10.3.0/24"], sa
        assert [c["name"] for c in charon.child_sas()] == ["net3"]
        sent, received, text = lab.ping("alice", B_IN3, source=A_IN, count=3, interval=0.05)
        assert (sent, received) == (3, 3), text + "\n" + iked.log_tail()
    finally:
        iked.stop()
        charon.stop()
        lab.run("bob", ["ip", "addr", "del", f"{B_IN3}/32", "dev", "lo"], check=False)
