"""medsrv-psk: alice behind NAT A and bob behind NAT B get a direct tunnel through OUR mediation server.

carol runs mediation_server (PSK pseudonyms alice@med / bob@med); alice and bob run mediation_client.
Checks: mediation SAs registered with the NATs' public endpoints, the mediated IKE_SA + CHILD_SA on
both peers, ping both ways, and a capture on natB's WAN side showing the ESP going NAT to NAT directly.
"""

from __future__ import annotations

from scenarios.lab import nat_lab
from scenarios.lab.mediation import LAN, OurMediation, mediated_sas, ping_both, say_sa, show_log
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "our mediation server and clients: alice and bob behind two EIM NATs, PSK pseudonyms"


def run(story: Story) -> None:
    story.step("topology: alice 10.1.0.2 | natA 203.0.113.1 -- internet -- natB 203.0.113.2 | bob 10.2.0.2; "
               f"carol {CAROL} = mediation server")
    lab = story.lab(nat_lab(nat_a="eim", nat_b="eim"))
    med = OurMediation(lab)
    story.step("start mediation_server on carol, mediation_client on bob and alice")
    med.start_server()
    bob = med.start_client("bob")
    alice = med.start_client("alice")
    peers = med.wait_registered("alice", "bob")
    for p in peers:
        story.say(f"online: {p['identity']} at {p['endpoint']} (mediation SA #{p['ike']})")
    story.check({p["endpoint"] for p in peers} == {"203.0.113.1[4500]", "203.0.113.2[4500]"},
                "the server learned both peers' public (server-reflexive) endpoints")

    story.step("alice: up bob (ME_CONNECT via carol, connectivity checks, direct IKE_SA)")
    with lab.capture("natB", "wan0", "udp") as cap:
        r = alice.up("bob", timeout=30)
        story.say(f"mediated connection up in {r['elapsed_ms']} ms, peer at {r['remote'][0]}[{r['remote'][1]}]")
        show_log(story, alice.log_text(), ("ME_CONNECT", "checklist", "selected pair", "initiating IKE_SA",
                                           "established"))
        ma, mb = mediated_sas(alice, bob, "bob", "alice")
        story.step("ping both ways through the tunnel")
        a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    say_sa(story, "alice", ma)
    say_sa(story, "bob", mb)
    story.check(ma["remote-host"] == "203.0.113.2" and mb["remote-host"] == "203.0.113.1",
                "the mediated SA runs between the two NATs' public addresses")
    story.check(ma["child-sas"][0]["spi-in"] == mb["child-sas"][0]["spi-out"], "both peers agree on the SPIs")
    story.check(a2b == 3 and b2a == 3, f"ping alice->bob {a2b}/3, bob->alice {b2a}/3")
    story.packets("natB wan0 (UDP)", [p for p in cap.packets if p.kind in ("esp-in-udp", "esp")])
    esp = cap.of_kind("esp-in-udp")
    direct = [p for p in esp if {p.src, p.dst} == {"203.0.113.1", "203.0.113.2"}]
    via_carol = [p for p in esp if CAROL in (p.src, p.dst)]
    story.check(len(direct) >= 6 and {p.src for p in direct} == {"203.0.113.1", "203.0.113.2"}
                and not via_carol,
                f"ESP went NAT to NAT directly ({len(direct)} packets), none via the mediation server")
    story.end(med)
