"""symmetric-nat-relay: bob behind a symmetric NAT connects to alice through carol's data relay.

Our relay extension (docs/protocol.md §11.1; strongSwan's mediation server relays no data): alice and bob
announce the relay Vendor ID on their mediation connections, carol (`[mediation] relay = true`) echoes it
and, relaying the ME_CONNECTs, offers each side a RELAYED endpoint: a UDP port on carol that reaches the
other peer. The direct pairs cannot work (natB maps each destination to a new random port), the relayed
pair is the lowest-priority one and succeeds, so alice's mediated IKE_SA + CHILD_SA run through carol.
Checks: the SA's remote is carol's relay port on both peers, ping both ways, carol's capture shows the
ESP-in-UDP relayed, natB's WAN shows ESP to carol only (never to natA), carol's status lists the relay.
"""

from __future__ import annotations

import re
import time

from scenarios.lab import nat_lab
from scenarios.lab.mediation import LAN, OurMediation, mediated_sas, say_sa, show_log
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "ours: bob behind a symmetric NAT: the connection comes up through carol's data relay"

NAT_A = "eim"
PORTS = (50000, 50099)
NATT = (4500, *range(PORTS[0], PORTS[1] + 1))  # ESP-in-UDP also flows on the relay ports


def run(story: Story, nat_a: str = NAT_A) -> None:
    story.step(f"topology: alice 10.1.0.2 | natA 203.0.113.1 ({nat_a}) -- internet -- natB 203.0.113.2 "
               f"(symmetric, fully random) | bob 10.2.0.2; carol {CAROL} = mediation server with relay")
    lab = story.lab(nat_lab(nat_a=nat_a, nat_b="symmetric"))  # type: ignore[arg-type]
    med = OurMediation(lab)
    extra = f'relay = true\nrelay_ports = "{PORTS[0]}-{PORTS[1]}"\nrelay_idle_timeout = 60'
    story.step("start mediation_server on carol ([mediation] relay = true), mediation_client on bob and alice")
    med.start_server(extra=extra)
    bob = med.start_client("bob", client="check_timeout = 10")
    alice = med.start_client("alice", client="check_timeout = 10")
    peers = med.wait_registered("alice", "bob")
    for p in peers:
        story.say(f"online: {p['identity']} at {p['endpoint']} (mediation SA #{p['ike']})")
    assert med.server is not None

    story.step("alice: up bob (ME_CONNECT via carol, checks: direct pairs fail, the relayed pair succeeds)")
    with lab.capture("carol", "eth0", "udp", natt_ports=NATT) as cap_c, \
            lab.capture("natB", "wan0", "udp", natt_ports=NATT) as cap_b:
        t0 = time.monotonic()
        r = alice.up("bob", timeout=30)
        elapsed = time.monotonic() - t0
        story.say(f"mediated connection up in {r['elapsed_ms']} ms ({elapsed:.2f} s for `up`), peer at "
                  f"{r['remote'][0]}[{r['remote'][1]}]")
        show_log(story, alice.log_text(), ("selected pair", "initiating IKE_SA", "RELAYED", "established"), "alice")
        ma, mb = mediated_sas(alice, bob, "bob", "alice")
        story.step("ping both ways through the tunnel (via carol's relay)")
        a2b = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=5, interval=0.1)
        b2a = lab.ping("bob", LAN["alice"], source=LAN["bob"], count=5, interval=0.1)
        status = med.server.status()
    say_sa(story, "alice", ma)
    say_sa(story, "bob", mb)
    relay_ports = set(range(PORTS[0], PORTS[1] + 1))
    story.check(ma["remote-host"] == CAROL and int(ma["remote-port"]) in relay_ports
                and mb["remote-host"] == CAROL and int(mb["remote-port"]) in relay_ports
                and ma["remote-port"] != mb["remote-port"],
                "both peers' mediated SA runs to a relay port on carol (one port per side)")
    story.check(str(ma["local-port"]) == "4500" and str(mb["local-port"]) == "4500",
                "both peers send from 4500 (ESP-in-UDP, NAT seen on both sides)")
    story.check(ma["child-sas"][0]["spi-in"] == mb["child-sas"][0]["spi-out"], "both peers agree on the SPIs")
    rtt = re.search(r"= [\d.]+/([\d.]+)/", a2b[2])
    story.check(a2b[1] == 5 and b2a[1] == 5, f"ping alice->bob {a2b[1]}/5, bob->alice {b2a[1]}/5 "
                f"(avg RTT via relay {rtt.group(1) if rtt else '?'} ms)")
    relays = status.get("relays", [])
    for rl in relays:
        story.say(f"carol relay #{rl['id']}: {rl['a']} {rl['a_latched']} -> :{rl['a_port']} | :{rl['b_port']} <- "
                  f"{rl['b_latched']} {rl['b']}: {rl['bytes_a_to_b']} B ->, {rl['bytes_b_to_a']} B <-")
    story.check(len(relays) == 1 and relays[0]["bytes_a_to_b"] > 0 and relays[0]["bytes_b_to_a"] > 0,
                "carol's status shows one active relay carrying traffic both ways")
    esp_c = cap_c.of_kind("esp-in-udp")
    story.packets("carol eth0, ESP-in-UDP", esp_c, limit=8)
    into = [p for p in esp_c if p.dst == CAROL and p.dport in relay_ports]
    out = [p for p in esp_c if p.src == CAROL and p.sport in relay_ports]
    story.check(len(into) >= 10 and len(out) >= 10 and {p.src for p in into} >= {"203.0.113.2"},
                f"carol relays the ESP-in-UDP ({len(into)} in, {len(out)} out on relay ports)")
    esp_b = cap_b.of_kind("esp-in-udp")
    story.check(bool(esp_b) and all(CAROL in (p.src, p.dst) for p in esp_b)
                and not [p for p in esp_b if "203.0.113.1" in (p.src, p.dst)],
                f"natB wan0: all {len(esp_b)} ESP-in-UDP packets go to/come from carol, none to natA")
    story.end(med)
