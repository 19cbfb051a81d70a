"""charon-medsrv-psk: three strongSwan charons (carol = mediation server; alice, bob behind EIM NATs).

The reference behaviour our implementation is measured against (docs/nat-lab.md §7.4, strongSwan's
testing/tests/p2pnat/medsrv-psk): mediation SAs to carol, ME_CONNECT relayed by carol, connectivity
checks, then a direct IKE_SA + CHILD_SA between the NATs; ping both ways; ESP goes NAT to NAT.
"""

from __future__ import annotations

import time

from scenarios.lab import nat_lab
from scenarios.lab.charon import Charon
from scenarios.lab.medsetup import LAN, CharonMediation
from scenarios.lab.story import Story

TITLE = "all-charon mediation: alice and bob behind EIM NATs, carol = charon mediation server, PSK"

ME_LOG = (r"initiating mediation connection|ME_CONNECT (request|response)|received (HOST|SERVER_REFLEXIVE|"
          r"PEER_REFLEXIVE) ME_ENDPOINT|pairs on checklist|fast finishing|initiating IKE_SA p2p|"
          r"IKE_SA p2p\[\d+\] established|CHILD_SA net\{\d+\} established")


def show_sas(story: Story, charon: Charon) -> None:
    for sa in charon.list_sas():
        story.say(f"{charon.host}: {sa['name']}[{sa['uniqueid']}] {sa['state']} "
                  f"{sa['local-host']}:{sa['local-port']}[{sa['local-id']}] ... "
                  f"{sa['remote-host']}:{sa['remote-port']}[{sa['remote-id']}]")
        for child in sa.get("child-sas", {}).values():
            story.say(f"    {child['name']}{{{child['uniqueid']}}} {child['state']} {child['mode']}"
                      f"{'-in-UDP' if child.get('encap') == 'yes' else ''} {child['protocol']} "
                      f"{child.get('encr-alg', '')}-{child.get('encr-keysize', '')} "
                      f"SPIs {child['spi-in']}_i {child['spi-out']}_o "
                      f"{' '.join(child['local-ts'])} === {' '.join(child['remote-ts'])}")


def run(story: Story) -> None:
    story.step("build the topology: alice 10.1.0.2 | natA 203.0.113.1 -- br0 -- natB 203.0.113.2 | "
               "bob 10.2.0.2, carol 203.0.113.10")
    lab = story.lab(nat_lab(nat_a="eim", nat_b="eim"))
    story.say("NATs: masquerade (endpoint-independent, port preserving) + WAN input drop of new UDP")

    story.step("start charon on carol (mediation server), alice and bob (mediation clients)")
    med = CharonMediation(lab)
    med.start()
    for c in med.charons:
        story.say(f"{c.host}: {c.swanctl_dir / 'swanctl.conf'}  log {c.log_path}")

    story.step("bob, then alice: swanctl --initiate --ike medsrv")
    med.bring_up_mediation()
    registered = med.carol.list_sas("medsrv")
    for sa in registered:
        story.say(f"carol: peer '{sa['remote-id']}' online @ {sa['remote-host']}[{sa['remote-port']}]")
    story.check(sorted((sa["remote-host"], sa["remote-port"]) for sa in registered)
                == [("203.0.113.1", "4500"), ("203.0.113.2", "4500")],
                "carol holds both mediation SAs, from the NATs' public addresses on port 4500")

    story.step("alice: swanctl --initiate --child net (mediated connection p2p, peer bob@med)")
    mark = med.alice.log_mark()
    t0 = time.monotonic()
    elapsed = med.initiate_and_wait(timeout=20)
    story.say(f"CHILD_SA installed {elapsed * 1000:.0f} ms after the initiate "
              f"(charon waits 1 s after the first successful check)")
    for line in med.alice.log_lines(ME_LOG, since=mark):
        story.say(f"alice: {line}")
    med.bob.wait_child("net", timeout=max(1.0, 20 - (time.monotonic() - t0)))

    story.step("SAs on all three hosts")
    for c in med.charons:
        show_sas(story, c)
    child = med.alice.wait_child("net")
    story.check(child["ike"]["remote-host"] == "203.0.113.2" and child["ike"]["remote-port"] == "4500",
                "alice's mediated IKE_SA goes to natB's public address 203.0.113.2:4500")
    story.check(child["ike"]["remote-id"] == "bob@p2p", "peer authenticated as bob@p2p")

    story.step("ping through the tunnel, capturing on natB wan0 and carol eth0")
    with lab.capture("natB", "wan0", "udp port 4500") as wan, lab.capture("carol", "eth0", "udp") as carol:
        sent, rcvd, _ = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)
        story.check(rcvd == sent == 3, f"alice -> bob ping: {rcvd}/{sent}")
        sent, rcvd, _ = lab.ping("bob", LAN["alice"], source=LAN["bob"], count=3, interval=0.1)
        story.check(rcvd == sent == 3, f"bob -> alice ping: {rcvd}/{sent}")

    story.step("capture proof")
    esp = wan.of_kind("esp-in-udp")
    story.packets("natB wan0, ESP-in-UDP", esp, limit=6)
    dirs = {(p.src, p.sport, p.dst, p.dport) for p in esp}
    story.check({("203.0.113.1", 4500, "203.0.113.2", 4500), ("203.0.113.2", 4500, "203.0.113.1", 4500)} <= dirs,
                "ESP-in-UDP flows 203.0.113.1:4500 <-> 203.0.113.2:4500, NAT to NAT")
    story.check({f"{p.spi:08x}" for p in esp} <= {child["spi-in"], child["spi-out"]},
                "the SPIs on the wire are the mediated CHILD_SA's")
    via_carol = carol.of_kind("esp-in-udp", "esp")
    story.packets("carol eth0, ESP", via_carol)
    story.check(not via_carol, "no ESP through the mediation server")
