"""Mediation interop with strongSwan charon , on a real-NAT lab.

``nat_lab`` (docs/nat-lab.md §3.2): alice 10.1.0.2 behind natA 203.0.113.1, bob 10.2.0.2 behind natB
203.0.113.2 (both endpoint-independent masquerade with the WAN drop rule), carol 203.0.113.10 = the
mediation server. PSK pseudonyms alice@med / bob@med at the server (docs/nat-lab.md §7.4), mediated
connection alice@p2p <-> bob@p2p with a CHILD_SA 10.1.0.2/32 === 10.2.0.2/32.

Cases (each one mixes our daemons and charons differently):

- ``ours-server``: our mediation_server on carol, charon on alice and bob;
- ``charon-server``: charon on carol, our mediation_client on alice and bob;
- ``mixed-*``: one of ours and one charon as peers, through our server or a charon server.

Every case checks: both peers registered at the server with the NATs' public endpoints (4500), the
mediated IKE_SA + CHILD_SA on both peers between the NATs' public addresses, ping both ways through the
tunnel, ESP-in-UDP NAT to NAT on natB's WAN side and none through carol. One topology for the module;
daemons are restarted per case and conntrack is flushed in between.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.mediation import LAN, P2P_PSK, PUBLIC, client_toml, server_toml
from scenarios.lab.medsetup import default_peers, medsrv_conf, peer_conf
from scenarios.lab.topologies import CAROL
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

OTHER = {"alice": "bob", "bob": "alice"}


# ---------------------------------------------------------------------------------------------- servers


class OurServer:
    def __init__(self, lab: Lab, case: str) -> None:
        self.d = Iked(lab, "carol", server_toml(["alice", "bob"]), name=f"medsrv-{case}",
                      module="mediation_server")

    def start(self) -> None:
        self.d.start()

    def online(self, timeout: float = 15.0) -> dict[str, str]:
        """identity -> public endpoint "ip[port]" once both peers are registered."""
        return {p["identity"]: p["endpoint"] for p in self.d.wait_peers({"alice@med", "bob@med"}, timeout)}

    def logs(self) -> str:
        return f"--- our server (carol) ---\n{self.d.log_tail(60)}"

    def stop(self) -> None:
        self.d.stop()


class CharonServer:
    def __init__(self, lab: Lab, case: str) -> None:
        self.c = Charon(lab, "carol", name=f"charon-{case}", conf=medsrv_conf(list(default_peers())))

    def start(self) -> None:
        self.c.start()

    def online(self, timeout: float = 15.0) -> dict[str, str]:
        sas = self.c.wait_ike("medsrv", count=2, timeout=timeout)
        return {sa["remote-id"]: f"{sa['remote-host']}[{sa['remote-port']}]" for sa in sas}

    def logs(self) -> str:
        return f"--- charon server (carol) ---\n{self.c.log_tail(60)}"

    def stop(self) -> None:
        self.c.stop()


# ------------------------------------------------------------------------------------------------ peers


@dataclass
class Tunnel:
    remote_host: str
    spi_in: str
    spi_out: str


class CharonPeer:
    def __init__(self, lab: Lab, host: str, case: str) -> None:
        a, b = default_peers(host, OTHER[host])
        self.host = host
        self.c = Charon(lab, host, name=f"charon-{case}", conf=peer_conf(a, b, P2P_PSK))

    def start(self) -> None:
        self.c.start()

    def register(self) -> None:
        self.c.initiate(ike="medsrv", timeout=15)

    def initiate(self) -> None:
        self.c.initiate(child="net", wait=False)

    def tunnel(self, timeout: float = 20.0) -> Tunnel:
        child = self.c.wait_child("net", timeout=timeout)
        assert child["ike"]["name"] == "p2p" and child["ike"]["remote-id"] == f"{OTHER[self.host]}@p2p"
        return Tunnel(child["ike"]["remote-host"], child["spi-in"], child["spi-out"])

    def checks_ok(self) -> bool:
        """charon validated a pair: a check response carried a MAC made with the peer's key."""
        return any(self.c.log_lines(r"endpoint pair '\d+' is valid"))

    def answered_checks(self) -> bool:
        """charon verified a check request's MAC (made with the peer's key) and answered it."""
        return any(self.c.log_lines(r"generating INFORMATIONAL response \d+ \[ N\(ME_CID\) N\(ME_EP\) N\(ME_CAUTH\) \]")) \
            and not any(self.c.log_lines("connectivity check verification failed"))

    def logs(self) -> str:
        return f"--- charon {self.host} ---\n{self.c.log_tail(80)}"

    def stop(self) -> None:
        self.c.stop()


class OurPeer:
    def __init__(self, lab: Lab, host: str, case: str) -> None:
        self.host = host
        self.d = Iked(lab, host, client_toml(host, [OTHER[host]]), name=f"medcli-{case}",
                      module="mediation_client")
        self.result: dict[str, Any] | None = None

    def start(self) -> None:
        self.d.start()  # the mediation connection starts with the daemon

    def register(self) -> None:
        pass

    def initiate(self) -> None:
        self.result = self.d.up(OTHER[self.host], timeout=20)

    def tunnel(self, timeout: float = 20.0) -> Tunnel:
        peer = OTHER[self.host]
        sas = self.d.wait_sas(lambda s: any(x["name"] == peer and x["child-sas"] for x in s), timeout=timeout)
        (sa,) = [x for x in sas if x["name"] == peer]
        assert sa["remote-id"] == f"{peer}@p2p", sa
        return Tunnel(sa["remote-host"], sa["child-sas"][0]["spi-in"], sa["child-sas"][0]["spi-out"])

    def checks_ok(self) -> bool:
        return re.search(r"checklist \w+: pair \d+: \w+ -> SUCCEEDED", self.d.log_text()) is not None

    def answered_checks(self) -> bool:
        """The target's check list stopped having answered check requests whose MAC it verified."""
        return re.search(r"checklist \w+ stopped: .*\(([1-9]\d*) verified check\(s\) answered\)",
                         self.d.log_text()) is not None

    def logs(self) -> str:
        return f"--- ours {self.host} ---\n{self.d.log_tail(80)}"

    def stop(self) -> None:
        self.d.stop()


SERVERS = {"ours": OurServer, "charon": CharonServer}
PEERS = {"ours": OurPeer, "charon": CharonPeer}

CASES = [
    # (id, server, alice, bob); alice initiates the mediated connection
    ("ours-server-charon-peers", "ours", "charon", "charon"),
    ("charon-server-our-peers", "charon", "ours", "ours"),
    ("mixed-our-alice-charon-bob-our-server", "ours", "ours", "charon"),
    ("mixed-our-alice-charon-bob-charon-server", "charon", "ours", "charon"),
    ("mixed-charon-alice-our-bob-our-server", "ours", "charon", "ours"),
    ("mixed-charon-alice-our-bob-charon-server", "charon", "charon", "ours"),
]


@pytest.mark.parametrize(("server_kind", "alice_kind", "bob_kind"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_mediated_tunnel(nat_lab_per_module: Lab, server_kind: str, alice_kind: str, bob_kind: str) -> None:
    lab = nat_lab_per_module
    case = f"{server_kind[0]}{alice_kind[0]}{bob_kind[0]}"
    lab.flush_conntrack()  # nothing runs between cases: forget every mapping, mediation SAs included
    server = SERVERS[server_kind](lab, case)
    alice = PEERS[alice_kind](lab, "alice", case)
    bob = PEERS[bob_kind](lab, "bob", case)
    parts: list[Any] = [server, bob, alice]
    try:
        for p in parts:
            p.start()
        bob.register()
        alice.register()
        online = server.online()
        assert online["alice@med"] == "203.0.113.1[4500]" and online["bob@med"] == "203.0.113.2[4500]", online

        with lab.capture("natB", "wan0", "udp") as wan, lab.capture("carol", "eth0", "udp") as at_carol:
            t0 = time.monotonic()
            alice.initiate()
            ta = alice.tunnel()
            tb = bob.tunnel(timeout=max(1.0, 20 - (time.monotonic() - t0)))
            a2b = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)
            b2a = lab.ping("bob", LAN["alice"], source=LAN["bob"], count=3, interval=0.1)

        # both sides' connectivity checks passed the MAC check, not only the mediated IKE_SA_INIT: the
        # initiator's pair succeeded (the target's response MAC verified). The target verified the
        # initiator's check MAC either way, but its own check on the working pair may still be unanswered
        # when the initiator nominates (ours as soon as its check is answered, docs/protocol.md §8;
        # charon 1 s after its first valid pair, or at once when no pair is left waiting) and its
        # IKE_SA_INIT stops the target's list, so the target shows that it verified and answered a check
        assert alice.checks_ok()
        assert bob.checks_ok() or bob.answered_checks()
        assert ta.remote_host == PUBLIC["bob"] and tb.remote_host == PUBLIC["alice"], (ta, tb)
        assert ta.spi_in == tb.spi_out and ta.spi_out == tb.spi_in, (ta, tb)
        assert a2b[1] == 3, a2b[2]
        assert b2a[1] == 3, b2a[2]
        esp = wan.of_kind("esp-in-udp")
        dirs = {(p.src, p.sport, p.dst, p.dport) for p in esp}
        assert {("203.0.113.1", 4500, "203.0.113.2", 4500),
                ("203.0.113.2", 4500, "203.0.113.1", 4500)} <= dirs, [str(p) for p in wan.packets]
        assert {f"{p.spi:08x}" for p in esp} <= {ta.spi_in, ta.spi_out}, [str(p) for p in esp]
        via_carol = at_carol.of_kind("esp-in-udp", "esp")
        assert not via_carol and all(CAROL not in (p.src, p.dst) for p in esp), [str(p) for p in via_carol]
    except BaseException:
        for p in parts:
            print(p.logs())
        raise
    finally:
        for p in reversed(parts):
            p.stop()
