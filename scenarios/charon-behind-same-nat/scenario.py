"""charon-behind-same-nat: alice and venus behind one NAT, venus comes online later (callback path).

Model: strongSwan's testing/tests/p2pnat/behind-same-nat (docs/nat-lab.md §7.4). alice registers and asks for
venus while venus is offline (ME_CONNECT_FAILED, callback registered at carol); when venus registers,
carol sends ME_CALLBACK, alice re-runs mediation and the host-to-host pair on the LAN wins.
"""

from __future__ import annotations

import time

from scenarios.lab import nat_lab
from scenarios.lab.medsetup import CharonMediation
from scenarios.lab.story import Story

TITLE = "all-charon mediation, alice and venus behind natA, venus online later (ME_CALLBACK)"

ME_LOG = (r"ME_CONNECT (request|response)|not online|ME_CALLBACK|received (HOST|SERVER_REFLEXIVE|"
          r"PEER_REFLEXIVE) ME_ENDPOINT|fast finishing|initiating IKE_SA p2p|IKE_SA p2p\[\d+\] established|"
          r"CHILD_SA net\{\d+\} established")


def run(story: Story) -> None:
    story.step("build the topology: alice 10.1.0.2 and venus 10.1.0.3 behind natA (EIM), carol 203.0.113.10")
    lab = story.lab(nat_lab(same_nat_peer=True))
    # kernel-libipsec refuses a CHILD_SA whose TS are the peers' own (LAN) addresses: tunnel inner addresses
    inner = {"alice": "10.11.0.2", "venus": "10.11.0.3"}
    for host, ip in inner.items():
        lab.addr(host, "lo", f"{ip}/32")
    story.say(f"tunnel inner addresses on lo: {inner}")

    story.step("start charon on carol (mediation server), alice and venus")
    med = CharonMediation(lab, initiator="alice", responder="venus", ts_addrs=inner)
    med.start()
    alice, venus, carol = med.alice, med.bob, med.carol

    story.step("alice: register at carol, then initiate the mediated connection to venus (offline)")
    mark = alice.log_mark()
    alice.initiate(ike="medsrv")
    carol.wait_ike("medsrv", count=1)
    alice.initiate(child="net", wait=False)
    m = alice.wait_log(r"peer '[^']+' is not online|ME_CONNECT_FAILED", since=mark, timeout=10)
    story.check(True, f"alice was told venus is offline: {m.group(0)}")

    story.step("venus: register at carol -> carol calls alice back")
    t0 = time.monotonic()
    venus.initiate(ike="medsrv")
    alice.wait_log(r"received ME_CALLBACK", since=mark, timeout=10)
    child = alice.wait_child("net", timeout=20)
    story.say(f"mediated CHILD_SA installed {1000 * (time.monotonic() - t0):.0f} ms after venus registered")
    for line in alice.log_lines(ME_LOG, since=mark):
        story.say(f"alice: {line}")
    venus.wait_child("net", timeout=5)
    ike = child["ike"]
    story.check((ike["local-host"], ike["remote-host"], ike["remote-port"]) == ("10.1.0.2", "10.1.0.3", "4500"),
                f"host-to-host pair won: {ike['local-host']}:{ike['local-port']} <-> "
                f"{ike['remote-host']}:{ike['remote-port']}")

    story.step("ping through the tunnel, capturing on natA lan0 and wan0")
    with lab.capture("natA", "lan0", "udp port 4500") as lan, lab.capture("natA", "wan0", "udp") as wan:
        sent, rcvd, _ = lab.ping("alice", inner["venus"], source=inner["alice"], count=3, interval=0.1)
        story.check(rcvd == sent == 3, f"alice -> venus ping: {rcvd}/{sent}")
        sent, rcvd, _ = lab.ping("venus", inner["alice"], source=inner["venus"], count=3, interval=0.1)
        story.check(rcvd == sent == 3, f"venus -> alice ping: {rcvd}/{sent}")
    esp = lan.of_kind("esp-in-udp")
    story.packets("natA lan0, ESP-in-UDP", esp, limit=4)
    story.check({(p.src, p.dst) for p in esp} == {("10.1.0.2", "10.1.0.3"), ("10.1.0.3", "10.1.0.2")},
                "ESP stays on the LAN, 10.1.0.2:4500 <-> 10.1.0.3:4500")
    story.check(not wan.of_kind("esp-in-udp", "esp"), "no ESP on the NAT's WAN side")
