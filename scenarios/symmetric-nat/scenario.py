"""symmetric-nat: bob behind a NAT with fully random port mapping: a clear failure, in bounded time.

natB maps every new destination to a new random port (nftables `masquerade fully-random`), so the
endpoint carol learned for bob is useless to alice and bob's checks arrive at natA from ports alice never
sent to (dropped by its WAN rule). With carol's data relay off (`[mediation] relay = false`,
explicitly: the relay-on case is symmetric-nat-relay) there is no path: alice's `up bob` must end
with "checks failed: ..." listing the pairs it tried, within the configured deadline
(`[client] check_timeout = 5`), not hang; nothing may be left half up.
"""

from __future__ import annotations

import re
import time
from typing import Any

from scenarios.lab import nat_lab
from scenarios.lab.iked import IkedError
from scenarios.lab.mediation import OurMediation
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "ours: bob behind a symmetric NAT (random ports): checks fail with a clear report within the deadline"

CHECK_TIMEOUT = 5.0


def run(story: Story) -> None:
    story.step("topology: alice 10.1.0.2 | natA 203.0.113.1 (EIM) -- internet -- natB 203.0.113.2 "
               f"(symmetric, fully random) | bob 10.2.0.2; carol {CAROL}")
    lab = story.lab(nat_lab(nat_a="eim", nat_b="symmetric"))
    med = OurMediation(lab)
    client = f"check_timeout = {CHECK_TIMEOUT:g}"
    story.step(f"start mediation_server on carol, mediation_client on bob and alice ([client] {client})")
    med.start_server(extra="relay = false")  # the relay-disabled case: its failure report stays tested
    bob = med.start_client("bob", client=client)
    alice = med.start_client("alice", client=client)
    peers = med.wait_registered("alice", "bob")
    for p in peers:
        story.say(f"online: {p['identity']} at {p['endpoint']} (mediation SA #{p['ike']})")
    bob_ep = next(p["endpoint"] for p in peers if p["identity"] == "bob@med")
    story.check(bob_ep.startswith("203.0.113.2[") and bob_ep != "203.0.113.2[4500]",
                f"carol sees bob at a random port of natB: {bob_ep}")

    story.step("alice: up bob (ME_CONNECT, connectivity checks that cannot succeed)")
    mark = len(alice.log_text())
    with lab.capture("natB", "wan0", "udp") as cap:
        t0 = time.monotonic()
        error = ""
        try:
            r = alice.up("bob", timeout=CHECK_TIMEOUT + 20)
            error = f"unexpectedly established: {r}"
        except IkedError as e:
            error = str(e).splitlines()[0]
        elapsed = time.monotonic() - t0
    story.say(f"alice's up bob returned after {elapsed:.2f} s: {error}")
    for line in alice.log_text()[mark:].splitlines():
        if any(k in line for k in ("ME_CONNECT", "failed", "selected")):
            story.say(f"alice: {line}")
    m = re.search(r"checks failed: (.*?); tried (.*)$", error)
    story.check(m is not None, "the reported reason is 'checks failed', with the tried pairs")
    tried = m.group(2) if m else ""
    story.say(f"tried: {tried}")
    story.check("203.0.113.2" in tried and "10.2.0.2" in tried,
                "the report lists the pairs toward bob's host and server-reflexive endpoints")
    story.check(CHECK_TIMEOUT - 0.5 <= elapsed <= CHECK_TIMEOUT + 3,
                f"failure reported in {elapsed:.2f} s (check_timeout {CHECK_TIMEOUT:g} s): bounded, no hang")
    conns = alice.status()["status"]["connections"]
    state: dict[str, Any] = next((c for c in conns if c["name"] == "bob"), {})
    story.say(f"alice status: '{state.get('name')}' {state.get('state')}: {state.get('reason')}")
    story.check(state.get("state") == "failed", "alice's status shows the connection failed")
    left = [s for c in (alice, bob) for s in c.list_sas() if s["name"] in ("alice", "bob")]
    story.check(not left, "no mediated IKE_SA left half up on either peer")
    registered = {p["identity"] for p in med.server.status()["peers"]} if med.server else set()
    story.check(registered >= {"alice@med", "bob@med"}, "both mediation SAs stay up at carol")
    checks = [p for p in cap.packets if p.kind == "ike" and p.dport not in (500,) and CAROL not in (p.src, p.dst)]
    story.packets("natB wan0, connectivity checks between the NATs", checks, limit=6)
    bob_port = int(bob_ep.split("[")[1].rstrip("]"))
    bob_ports = {p.sport for p in checks if p.src == "203.0.113.2" and p.sport is not None}
    story.check(bool(bob_ports) and bob_port not in bob_ports,
                f"bob's checks leave natB from port(s) {sorted(bob_ports)}, not {bob_port} that carol saw: "
                "the mapping depends on the destination")
    story.check(not cap.of_kind("esp-in-udp", "esp"), "no ESP anywhere")
    story.end(med)
