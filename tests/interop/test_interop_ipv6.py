"""IPv6 end to end with a real strongSwan charon: IKE over IPv6 (NAT-D with 16-octet addresses,
floating to 4500), a CHILD_SA with IPv6 traffic selectors, and ESP-in-UDP over IPv6 carrying a ping."""

from __future__ import annotations

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B, A_IN, B_IN = "2001:db8::1", "2001:db8::2", "2001:db8:a::1", "2001:db8:b::1"
PSK = "ipv6-interop-secret-0123456789"


def test_ipv6_tunnel_with_charon(two_hosts_per_test: Lab) -> None:
    lab = two_hosts_per_test
    charon = Charon(lab, "bob", name="charon-v6",
                    conf=charon_psk_conf(Tunnel(B, A, "bob@lab", "alice@lab", B_IN, A_IN, PSK)))
    iked = Iked(lab, "alice", iked_psk_toml(Tunnel(A, B, "alice@lab", "bob@lab", A_IN, B_IN, PSK)),
                name="iked-v6")
    try:
        for host, addr, inner in (("alice", A, A_IN), ("bob", B, B_IN)):
            lab.run(host, ["ip", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"])
            lab.run(host, ["ip", "addr", "add", f"{inner}/128", "dev", "lo"])
        charon.start()
        iked.start()
        iked.up("net", "net")
        (ours,) = iked.list_sas()
        theirs = charon.wait_child("net", timeout=5)
        assert ours["local-host"] == A and ours["remote-host"] == B
        assert ours["child-sas"][0]["spi-in"] == theirs["spi-out"]
        assert theirs["local-ts"] == [f"{B_IN}/128"] and theirs["remote-ts"] == [f"{A_IN}/128"]
        with lab.capture("bob", "eth0", "ip6 and udp") as cap:
            sent, received, out = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
        assert (sent, received) == (3, 3), out
        esp = cap.of_kind("esp-in-udp")
        assert len(esp) >= 6 and {f"{p.spi:08x}" for p in esp} == {theirs["spi-in"], theirs["spi-out"]}
    finally:
        iked.stop()
        charon.stop()
