"""dual-stack: IPv4 behind two NATs, global IPv6 without NAT; mediation over IPv4 finds the direct IPv6 path.

nat_lab plus IPv6: alice 2001:db8:1::2 and bob 2001:db8:2::2 routed (not translated) by natA/natB over the
internet bridge (2001:db8:ff::/64); nat_lab's WAN rule sits on the input hook and never sees routed v6,
so a CPE-like forward filter drops new inbound IPv6 UDP (simultaneous checks open it, as for IPv4).
carol (mediation server) has IPv4 only. Both clients listen on their v4 LAN and v6 global address and advertise HOST endpoints of both families plus the v4 srflx; the IPv6 HOST pair
(preferred by ip_pref, RFC 8421 spirit, so checked first) is selected, and the mediated IKE_SA + CHILD_SA (v4
LAN /32 traffic selectors, i.e. IPv4 inside ESP-in-UDP over IPv6) run directly between the two v6 addresses.

IPv4 between the two NATs' public addresses is filtered first (as between two carrier-grade NATs), so the
IPv4 pairs cannot work and mediation over IPv4 has to find the IPv6 path. Then the filter is removed and
the setup repeated: the v4 host -> srflx pair works too and its answer arrives within about a millisecond
of the v6 pair's, in either order; the controlling side waits a margin beyond the round trip of the
better pair whose check is in flight (docs/protocol.md §8), so the v6 pair is nominated every time.
"""

from __future__ import annotations

import re

from scenarios.lab import nat_lab
from scenarios.lab.iked import Iked
from scenarios.lab.mediation import LAN, OurMediation, client_toml, mediated_sas, ping_both, say_sa, show_log
from scenarios.lab.medsetup import forget_direct_mappings
from scenarios.lab.netns import Lab, wait_for
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL, NAT_PUBLIC

TITLE = "dual stack: v4 behind NATs, global v6; mediation over v4 selects the direct IPv6 path"

V4_OPEN_RUNS = 16
# a loaded machine can delay an answer's processing past the margin (docs/protocol.md §8), so the scenario asks
# for nearly every setup; the rule itself is pinned on a fake clock (tests/unit/me/test_checklist_dual_stack.py)
V4_OPEN_MIN_V6 = 14
V6 = {"alice": "2001:db8:1::2", "bob": "2001:db8:2::2"}
# (nat, LAN side, WAN side, LAN prefix behind it)
V6_NATS = {"natA": ("2001:db8:1::1", "2001:db8:ff::1", "2001:db8:1::/64"),
           "natB": ("2001:db8:2::1", "2001:db8:ff::2", "2001:db8:2::/64")}


# a CPE's IPv6 firewall: routed (not NATed) traffic crosses the forward hook, which nat_lab's input-only
# WAN rule does not see; unsolicited inbound UDP is dropped, replies to what the LAN sent pass (conntrack)
V6_FW = """table inet fw6 {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan0" meta nfproto ipv6 ct state new meta l4proto udp counter drop
  }
}
"""

# natA: no IPv4 between the two NATs' public addresses (both directions cross natA's forward hook)
V4_BLOCK = f"""table inet v4block {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    ip daddr {NAT_PUBLIC["natB"]} counter drop
    ip saddr {NAT_PUBLIC["natB"]} counter drop
  }}
}}
"""


def add_ipv6(lab: Lab) -> None:
    """Global IPv6 for alice and bob, routed by the NATs without translation (nodad: no DAD delay)."""
    def ip(host: str, *args: str) -> None:
        lab.run(host, ["ip", "-6", *args])

    for nat, (lan, wan, _) in V6_NATS.items():
        lab.sysctl(nat, "net.ipv6.conf.all.forwarding", 1)
        ip(nat, "addr", "add", f"{lan}/64", "dev", "lan0", "nodad")
        ip(nat, "addr", "add", f"{wan}/64", "dev", "wan0", "nodad")
        lab.nft(nat, V6_FW)
    for peer, nat in (("alice", "natA"), ("bob", "natB")):
        ip(peer, "addr", "add", f"{V6[peer]}/64", "dev", "eth0", "nodad")
        ip(peer, "route", "add", "default", "via", V6_NATS[nat][0])
    ip("natA", "route", "add", V6_NATS["natB"][2], "via", V6_NATS["natB"][1])
    ip("natB", "route", "add", V6_NATS["natA"][2], "via", V6_NATS["natA"][1])


def dual_toml(me: str) -> str:
    toml = client_toml(me, [p for p in ("alice", "bob") if p != me])
    return toml.replace(f'listen = ["{LAN[me]}"]', f'listen = ["{LAN[me]}", "{V6[me]}"]', 1)


def run(story: Story) -> None:
    story.step("topology: alice 10.1.0.2 + 2001:db8:1::2 | natA (v4 NAT, v6 routed) -- internet (v4 + v6) -- "
               f"natB | bob 10.2.0.2 + 2001:db8:2::2; carol {CAROL} (IPv4 only) = mediation server")
    lab = story.lab(nat_lab(nat_a="eim", nat_b="eim"))
    add_ipv6(lab)
    fw = lab.run("natB", ["nft", "list", "table", "inet", "fw"]).stdout
    story.check("ct state new meta l4proto udp drop" in fw and "hook input" in fw,
                "nat_lab's WAN rule (table inet fw) is on the input hook: it never sees routed IPv6")
    story.say("added a CPE-like IPv6 forward filter (table inet fw6): new inbound UDP from wan0 dropped")
    lab.nft("natA", V4_BLOCK)
    story.say(f"natA drops IPv4 to and from natB's {NAT_PUBLIC['natB']}: the v4 pairs between the NATs cannot work")
    # polled: the first echo may be lost while the links' own fe80:: addresses finish DAD (needed for
    # ND), kernel state that announces itself to nothing the lab reads
    wait_for(lambda: lab.ping("alice", V6["bob"], count=1, wait=0.3)[1] == 1, 10, interval=0.05,
             what="IPv6 alice -> bob")
    story.say("alice -> bob ICMPv6 echo answered (ICMP is not filtered): IPv6 routed end to end, no NAT")

    med = OurMediation(lab)
    story.step("start mediation_server on carol, mediation_client (listening on v4 + v6) on bob and alice")
    med.start_server()
    bob = Iked(lab, "bob", dual_toml("bob"), name="medcli", module="mediation_client").start()
    alice = Iked(lab, "alice", dual_toml("alice"), name="medcli", module="mediation_client").start()
    med.clients.update(alice=alice, bob=bob)
    peers = med.wait_registered("alice", "bob")
    for p in peers:
        story.say(f"online: {p['identity']} at {p['endpoint']} (mediation SA #{p['ike']}, over IPv4)")

    story.step("alice: up bob (ME_CONNECT via carol over IPv4, checks on both families, direct IKE_SA)")
    with lab.capture("natB", "wan0", "udp or ip6") as cap:
        r = alice.up("bob", timeout=30)
        story.say(f"mediated connection up in {r['elapsed_ms']} ms, peer at {r['remote'][0]}[{r['remote'][1]}]")
        log = alice.log_text()
        show_log(story, log, ("ME_CONNECT", "checklist", "selected pair", "initiating IKE_SA", "established"))
        ma, mb = mediated_sas(alice, bob, "bob", "alice")
        story.step("ping both ways through the tunnel (IPv4 inside ESP-in-UDP over IPv6)")
        a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    say_sa(story, "alice", ma)
    say_sa(story, "bob", mb)
    sel = [ln for ln in log.splitlines() if "selected pair" in ln]
    story.check(any(V6["alice"] in ln and V6["bob"] in ln for ln in sel),
                "the IPv6 HOST-HOST pair was selected")
    story.check(ma["remote-host"] == V6["bob"] and mb["remote-host"] == V6["alice"],
                "the mediated SA runs directly between the two global IPv6 addresses")
    story.check(ma["child-sas"][0]["spi-in"] == mb["child-sas"][0]["spi-out"], "both peers agree on the SPIs")
    story.check(a2b == 3 and b2a == 3, f"ping alice->bob {a2b}/3, bob->alice {b2a}/3 (IPv4 LAN /32s)")
    story.packets("natB wan0 (ESP)", [p for p in cap.packets if p.kind in ("esp-in-udp", "esp")])
    esp = cap.of_kind("esp-in-udp")
    direct = [p for p in esp if {p.src, p.dst} == set(V6.values())]
    via_carol = [p for p in esp if CAROL in (p.src, p.dst)]
    story.check(len(direct) >= 6 and {p.src for p in direct} == set(V6.values()) and not via_carol
                and len(direct) == len(esp),
                f"ESP-in-UDP went over IPv6 between alice and bob directly ({len(direct)} packets), none via carol")
    drops = {nat: ",".join(re.findall(r"counter packets (\d+)",
                                      lab.run(nat, ["nft", "list", "table", "inet", "fw6"]).stdout))
             for nat in V6_NATS}
    story.say("unsolicited inbound IPv6 UDP dropped by the CPE filters (checks arriving before the local side's own check opened "
              f"the pinhole): natA {drops['natA']}, natB {drops['natB']}")
    v4_open(story, lab, alice, bob)
    story.end(med)


def _forget(lab: Lab, alice: Iked, bob: Iked) -> None:
    """down the mediated IKE_SA, wait until both peers forgot it, clear the punched v4 and v6 paths."""
    for sa in alice.list_sas():
        if sa["name"] == "bob":
            alice.ctl({"cmd": "down", "ike": sa["uniqueid"], "timeout": 5}, timeout=10)
    alice.wait_sas(lambda sas: not any(s["name"] == "bob" for s in sas))
    bob.wait_sas(lambda sas: not any(s["name"] == "alice" for s in sas))
    forget_direct_mappings(lab)
    for nat in V6_NATS:
        lab.run(nat, ["conntrack", "-D", "-f", "ipv6", "-p", "udp"], check=False)


def v4_open(story: Story, lab: Lab, alice: Iked, bob: Iked) -> None:
    """The same setups with IPv4 open between the NATs: the v4 host -> srflx pair works too, and its answer
    arrives within about a millisecond of the v6 pair's; the v6 pair, higher in priority, is nominated
    every time (docs/protocol.md §8: a better pair with a check in flight gets a margin beyond its round
    trip), not whichever answer came first; on a loaded machine an answer processed late can still lose."""
    story.step(f"IPv4 between the NATs opened (table inet v4block removed); {V4_OPEN_RUNS} more setups")
    lab.run("natA", ["nft", "delete", "table", "inet", "v4block"])
    v6_pairs = v4_ok = 0
    for i in range(V4_OPEN_RUNS):
        _forget(lab, alice, bob)
        a0, b0 = len(alice.log_text().splitlines()), len(bob.log_text().splitlines())
        r = alice.up("bob", timeout=30)
        ma = next(s for s in alice.list_sas() if s["name"] == "bob")
        a_lines, b_lines = alice.log_text().splitlines()[a0:], bob.log_text().splitlines()[b0:]
        sel = [ln for ln in a_lines if "selected pair" in ln]
        v6 = len(sel) == 1 and V6["alice"] in sel[0] and V6["bob"] in sel[0] and ma["remote-host"] == V6["bob"]
        v6_pairs += v6
        # pair 1 is the v6 one on both sides (the unit test of the pairing); any other that succeeded is v4
        v4_ok += any(re.search(r"checklist \w+: pair ([2-9]|\d\d+): \w+ -> SUCCEEDED", ln) for ln in a_lines + b_lines)
        story.say(f"setup {i + 1}: up in {r['elapsed_ms']} ms, {'IPv6' if v6 else 'NOT IPv6'}: "
                  + (sel[0].split("selected pair ", 1)[1] if sel else "no selection logged"))
    story.check(v6_pairs >= V4_OPEN_MIN_V6, f"the IPv6 pair was nominated in {v6_pairs} of {V4_OPEN_RUNS} setups "
                f"with IPv4 open (at least {V4_OPEN_MIN_V6})")
    story.check(v4_ok >= 1, f"a v4 pair succeeded (on alice's or bob's list) in {v4_ok} of {V4_OPEN_RUNS} setups: "
                "the v6 pair won over a working v4 path")
