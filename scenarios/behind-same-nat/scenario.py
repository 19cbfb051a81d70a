"""behind-same-nat: alice and venus behind one NAT, venus comes online later (the callback path), ours.

carol runs mediation_server, alice and venus mediation_client (PSK pseudonyms). alice registers and asks
for venus while venus is offline: carol answers ME_CONNECT_FAILED and registers a callback. venus comes
online, carol sends alice ME_CALLBACK, alice re-runs the mediation and the host-to-host pair on the LAN
(10.1.0.2:4500 <-> 10.1.0.3:4500) wins. The tunnel carries the inner addresses on `lo` (a TS covering
the peers' own addresses would swallow the userspace data plane's own ESP).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from scenarios.lab import nat_lab
from scenarios.lab.events import wait_daemons
from scenarios.lab.mediation import OurMediation
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "ours: alice and venus behind natA, venus online later (ME_CONNECT_FAILED, ME_CALLBACK), LAN pair wins"

INNER = {"alice": "10.10.1.2", "venus": "10.10.1.3"}
ME_LOG = ("ME_CONNECT", "ME_CALLBACK", "selected pair", "initiating IKE_SA venus", "established")


def log_time(lines: list[str], key: str) -> float | None:
    """Seconds of day of the first log line containing `key` (lines start with HH:MM:SS.mmm)."""
    for line in lines:
        if key in line:
            h, m, sec = line.split(" ", 1)[0].split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
    return None


def run(story: Story) -> None:
    story.step("topology: alice 10.1.0.2 and venus 10.1.0.3 behind natA (EIM, 203.0.113.1), "
               f"carol {CAROL} = mediation server")
    lab = story.lab(nat_lab(same_nat_peer=True))
    for host, ip in INNER.items():
        lab.addr(host, "lo", f"{ip}/32")
    story.say(f"tunnel inner addresses on lo (traffic selectors): {INNER}")
    med = OurMediation(lab, peers=["alice", "venus"])

    story.step("start mediation_server on carol and mediation_client on alice (venus stays off)")
    server = med.start_server()
    alice = med.start_client("alice", ts=INNER)
    (p,) = [x for x in med.wait_registered("alice") if x["identity"] == "alice@med"]
    story.say(f"online: alice@med at {p['endpoint']}")

    story.step("alice: up venus while venus is offline")
    result: dict[str, Any] = {}

    def up() -> None:
        try:
            result.update(alice.up("venus", timeout=30))
        except Exception as e:  # noqa: BLE001 - reported by the checks
            result["error"] = str(e)

    mark = len(alice.log_text())
    t_up = time.monotonic()
    th = threading.Thread(target=up, daemon=True)
    th.start()
    waiting: list[dict[str, Any]] = []

    def callback_registered() -> bool:
        waiting[:] = server.status()["callbacks"]
        return any(c["requester"] == "alice@med" and c["target"] == "venus@med" for c in waiting)

    # carol answers the ME_CONNECT that stores the callback: a line ("sending packet") after it
    wait_daemons(callback_registered, 10, [server], what="callback registration at carol")
    for line in alice.log_text()[mark:].splitlines():
        if any(k in line for k in ("ME_CONNECT", "offline", "callback")):
            story.say(f"alice: {line}")
    story.check(True, f"carol holds the callback: {waiting[0]['requester']} waits for {waiting[0]['target']} "
                      f"(expires in {waiting[0]['expires_in']} s)")
    story.check("error" not in result and not result, "alice's connection waits for venus (no failure yet)")

    story.step("venus comes online -> carol sends alice ME_CALLBACK -> mediation, checks, IKE_SA")
    with lab.capture("natA", "lan0", "udp or esp") as lan, lab.capture("natA", "wan0", "udp or esp") as wan:
        t_venus = time.monotonic()
        venus = med.start_client("venus", ts=INNER)
        th.join(35)
        t_done = time.monotonic()
        story.check(bool(result.get("ok")), f"alice's up venus: {result.get('error') or 'established'}")
        if not result.get("ok"):
            return
        lines = alice.log_text()[mark:].splitlines()
        cb = next((i for i, line in enumerate(lines) if "received ME_CALLBACK" in line), 0)
        for line in lines[cb:]:
            if any(k in line for k in ME_LOG) and ("checklist" not in line or "selected pair" in line):
                story.say(f"alice: {line}")
        story.say(f"mediated connection up {1000 * (t_done - t_venus):.0f} ms after venus was started "
                  f"(daemon start + registration included; {t_done - t_up:.1f} s after alice's up)")
        t_cb, t_est = log_time(lines, "received ME_CALLBACK"), log_time(lines, "established in")
        if t_cb is not None and t_est is not None:
            story.say(f"from ME_CALLBACK to the mediated IKE_SA + CHILD_SA: {1000 * (t_est - t_cb):.0f} ms")
        sa_a = alice.wait_sas(lambda s: any(x["name"] == "venus" and x["child-sas"] for x in s))
        sa_v = venus.wait_sas(lambda s: any(x["name"] == "alice" and x["child-sas"] for x in s))
        registered = {x["identity"] for x in server.status()["peers"]}
        story.check(registered >= {"alice@med", "venus@med"}, "carol has both mediation SAs")
        story.step("ping both ways through the tunnel (inner addresses)")
        a2v = lab.ping("alice", INNER["venus"], source=INNER["alice"], count=3, interval=0.1)
        v2a = lab.ping("venus", INNER["alice"], source=INNER["venus"], count=3, interval=0.1)
    (ma,) = [x for x in sa_a if x["name"] == "venus"]
    (mv,) = [x for x in sa_v if x["name"] == "alice"]
    for h, sa in (("alice", ma), ("venus", mv)):
        ch = sa["child-sas"][0]
        story.say(f"{h}: {sa['local-host']}[{sa['local-port']}] ... {sa['remote-host']}[{sa['remote-port']}] "
                  f"CHILD_SA {ch['spi-in']}_i {ch['spi-out']}_o")
    story.check((ma["local-host"], str(ma["local-port"]), ma["remote-host"], str(ma["remote-port"]))
                == ("10.1.0.2", "4500", "10.1.0.3", "4500"),
                f"host-to-host pair won: {ma['local-host']}:{ma['local-port']} <-> "
                f"{ma['remote-host']}:{ma['remote-port']}")
    story.check(ma["child-sas"][0]["spi-in"] == mv["child-sas"][0]["spi-out"], "both peers agree on the SPIs")
    story.check(a2v[1] == 3 and v2a[1] == 3, f"ping alice->venus {a2v[1]}/3, venus->alice {v2a[1]}/3")
    esp = [p for p in lan.packets if p.kind in ("esp-in-udp", "esp")]
    story.packets("natA lan0 (ESP)", esp, limit=6)
    story.check(len(esp) >= 6 and {(p.src, p.dst) for p in esp} == {("10.1.0.2", "10.1.0.3"),
                                                                     ("10.1.0.3", "10.1.0.2")},
                f"ESP stays on the LAN between 10.1.0.2 and 10.1.0.3 ({len(esp)} packets)")
    wan_esp = [p for p in wan.packets if p.kind in ("esp-in-udp", "esp")]
    story.packets("natA wan0 (ESP)", wan_esp, limit=4)
    story.check(not wan_esp, "no ESP on the NAT's WAN side (nothing via carol)")
    story.end(med)
