"""Port mapping against Debian's miniupnpd in the NAT namespace (scenarios/lab/upnpgw.py): the codecs
and the three protocols against the real gateway, and the mediation client mapping its NAT-T port,
offering it, renewing it before expiry and deleting it at shutdown; through a symmetric NAT, which
without the mapping blocks every direct pair, the mediated tunnel then runs directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scenarios.lab import nat_lab
from scenarios.lab.events import wait_files
from scenarios.lab.mediation import LAN, OurMediation, mediated_sas
from scenarios.lab.topologies import lab_session
from scenarios.lab.upnpgw import UPNP_PUBLIC, MiniUpnpd, readdress_wan
from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, needs("root", "miniupnpd", why="network namespaces, nftables and miniupnpd")]

PROBE = r'''
import asyncio, json, sys
from mediation_client import portmap as pm
async def main():
    out = {}
    for proto, port in (("pcp", 4600), ("nat-pmp", 4601), ("upnp", 4602)):
        internal = ("10.2.0.2", port)
        try:
            if proto == "pcp":
                m = await pm.pcp_map("10.2.0.1", internal, 600)
            elif proto == "nat-pmp":
                m = await pm.natpmp_map("10.2.0.1", internal, 600)
            else:
                m = await asyncio.to_thread(pm._upnp_map, internal, 600)
            out[proto] = {"mapping": m.as_dict()}
            out[proto]["listed"] = sys.stdin.readline().strip()  # the test lists the gateway's rules here
            mapper = pm.PortMapper(internal)
            mapper.mapping = m
            await mapper.close()
        except pm.PortMapError as e:
            out[proto] = {"error": str(e)}
    print(json.dumps(out))
asyncio.run(main())
'''


def test_each_protocol_maps_and_deletes() -> None:
    """PCP, NAT-PMP and UPnP one after the other from bob: each mapping appears in miniupnpd's nftables
    redirects with the gateway's external address, and is gone after the deletion."""
    with lab_session(nat_lab, nat_a="eim", nat_b="symmetric") as lab:
        readdress_wan(lab, "natB", others=("carol", "natA"))
        gw = MiniUpnpd(lab, "natB", "10.2.0.0/24").start()
        res = lab.run("bob", [sys.executable, "-c", PROBE], input="\n\n\n", timeout=60,
                      env={"PYTHONPATH": str(ROOT)})
        out = json.loads(res.stdout)
        for proto, port in (("pcp", 4600), ("nat-pmp", 4601), ("upnp", 4602)):
            assert "mapping" in out[proto], (proto, out[proto], gw.log_text()[-2000:])
            assert out[proto]["mapping"]["external"] == f"{UPNP_PUBLIC}[{port}]"
            assert out[proto]["mapping"]["lifetime"] > 0
        # miniupnpd's redirects (nft rules it owns): its log line may come before the rule goes
        wait_files(lambda: not gw.redirects(), 10, [gw.log], what="every mapping deleted", backstop=0.1)
        log = gw.log_text()
        assert "PCP MAP: added mapping UDP 4600->10.2.0.2:4600" in log
        assert "NAT-PMP port mapping request : 4601->10.2.0.2:4601 udp lifetime=600s" in log
        gw.stop()


def test_client_maps_renews_and_deletes_and_goes_direct() -> None:
    with lab_session(nat_lab, nat_a="eim", nat_b="symmetric") as lab:
        readdress_wan(lab, "natB", others=("carol", "natA"))
        gw = MiniUpnpd(lab, "natB", "10.2.0.0/24", min_lifetime=4).start()
        assert gw.redirects() == []
        med = OurMediation(lab)
        med.start_server(extra="relay = false")
        bob = med.start_client("bob", client='check_timeout = 15\nport_mapping_lifetime = "4s"')
        alice = med.start_client("alice", client="check_timeout = 15\nport_mapping = false")
        try:
            med.wait_registered("alice", "bob")

            def mapping() -> dict[str, object]:
                return dict(bob.status()["status"].get("port_mapping") or {})

            bob.wait_state(lambda: "external" in mapping(), 15, "bob's port mapping")  # it logs "port mapping (...)"
            m = mapping()
            assert m["external"] == f"{UPNP_PUBLIC}[4500]" and m["internal"] == "10.2.0.2[4500]", m
            assert m["protocol"] == "pcp"  # miniupnpd speaks PCP: the first one tried
            assert gw.redirects() == [(4500, LAN["bob"], 4500)]
            # renewed before the 4 s lifetime runs out (at half of it), and still listed
            bob.wait_state(lambda: int(mapping().get("renewals", 0)) >= 2, 15, "two renewals")  # a line each
            assert gw.redirects() == [(4500, LAN["bob"], 4500)]

            r = alice.up("bob", timeout=30)
            sa_a, _sa_b = mediated_sas(alice, bob, "bob", "alice")
            assert (sa_a["remote-host"], str(sa_a["remote-port"])) == (UPNP_PUBLIC, "4500"), (r, sa_a)
            ping = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)
            assert ping[1] == 3
        finally:
            bob.stop()
        wait_files(lambda: gw.redirects() == [], 10, [gw.log], what="the mapping deleted at bob's shutdown",
                   backstop=0.1)
        assert "PCP MAP: added" in gw.log_text()
        med.stop()
