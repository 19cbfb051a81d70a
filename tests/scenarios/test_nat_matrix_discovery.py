"""RFC 5780 discovery through real nftables NATs of every lab kind (scenarios/lab/natkinds.py): our
mediation server answers STUN on carol (second address 203.0.113.11, second port 3479), the mediation
clients on alice and bob classify their NATs, and `ikectl status` shows it."""

from __future__ import annotations

import pytest

from scenarios.lab import nat_lab
from scenarios.lab.mediation import OurMediation
from scenarios.lab.natkinds import EXPECTED
from scenarios.lab.natlab import STUN_EXTRA, add_carol_alt, wait_nat
from scenarios.lab.topologies import lab_session
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="network namespaces with nftables NAT")]


@pytest.mark.parametrize(("kind_a", "kind_b"), [
    ("full-cone", "address-restricted"),
    ("port-restricted", "symmetric-random"),
    ("symmetric-sequential", "none"),
])
def test_discovery_classifies_each_nat(kind_a: str, kind_b: str) -> None:
    with lab_session(nat_lab, nat_a=kind_a, nat_b=kind_b) as lab:
        add_carol_alt(lab)
        med = OurMediation(lab)
        med.start_server(extra=STUN_EXTRA)
        alice = med.start_client("alice")
        bob = med.start_client("bob")
        try:
            for client, kind in ((alice, kind_a), (bob, kind_b)):
                nat = wait_nat(client)
                assert not nat["error"], nat
                assert (nat["mapping"], nat["filtering"]) == EXPECTED[kind], (kind, nat)
                assert nat["rfc5780"] == "full"
                if kind == "symmetric-sequential":
                    assert (nat["allocation"], nat["port_step"]) == ("sequential", 1), nat
                    assert nat["port_preservation"] is False
                elif kind == "symmetric-random":
                    assert nat["allocation"] == "random", nat
                elif kind != "none":
                    assert nat["port_preservation"] is True and nat["hairpinning"] is False, nat
            text = alice.ctl({"cmd": "status"})
            assert text["status"]["nat"]["summary"].startswith("mapping ")
            assert med.server is not None
            stun = med.server.status()["stun"]
            assert stun["requests"] > 0 and stun["changed"] > 0
        finally:
            med.stop()
