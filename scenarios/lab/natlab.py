"""NAT behaviour in the lab: carol's second STUN address (RFC 5780) and reading what a client measured."""

from __future__ import annotations

from typing import Any

from scenarios.lab.iked import Iked
from scenarios.lab.netns import Lab

CAROL_ALT = "203.0.113.11"  # carol's second address: RFC 5780 change-IP answers leave from here
STUN_EXTRA = f'stun_alt_address = "{CAROL_ALT}"'  # [mediation] of a server_toml


def add_carol_alt(lab: Lab) -> None:
    lab.addr("carol", "eth0", f"{CAROL_ALT}/24")


def wait_nat(client: Iked, timeout: float = 20.0) -> dict[str, Any]:
    """The client's NAT behaviour once its discovery has run (`ikectl status` -> status.nat)."""
    out: dict[str, Any] = {}

    def done() -> bool:
        st = client.ctl({"cmd": "status"}).get("status", {})
        if st.get("nat"):
            out.update(st["nat"])
            return True
        return False

    client.wait_state(done, timeout, f"{client.host}'s NAT behaviour discovery")  # it logs "NAT behaviour ..."
    return out


def tx_packets(lab: Lab, *hosts: str, ifname: str = "eth0") -> int:
    """Packets the hosts have sent on `ifname` (the kernel's counters: every datagram, retransmissions
    and keepalives included)."""
    total = 0
    for h in hosts:
        total += int(lab.run(h, ["cat", f"/sys/class/net/{ifname}/statistics/tx_packets"]).stdout.strip())
    return total


def hairpin_ruleset(public: str, mapped: dict[str, int], port: int = 4500) -> str:
    """RFC 4787 §6 hairpinning on one router for the given LAN hosts' mappings ({LAN address: public
    port}): a datagram from the LAN to public:P goes back into the LAN to the host mapped on P, with the
    sender's own mapped address as its source (REQ-9). Linux conntrack cannot look up another flow's
    mapping, so the rules name the mappings the peers already have (toward the mediation server;
    docs/nat-lab.md §4.6)."""
    pre = "\n    ".join(f'iifname "lan0" ip daddr {public} udp dport {p} dnat to {h}:{port}' for h, p in mapped.items())
    post = "\n    ".join(f'oifname "lan0" ct status dnat ip saddr {h} udp sport {port} snat to {public}:{p}'
                         for h, p in mapped.items())
    return f"""table ip hairpin {{
  chain pre {{
    type nat hook prerouting priority dstnat - 1; policy accept;
    {pre}
  }}
  chain post {{
    type nat hook postrouting priority srcnat - 1; policy accept;
    {post}
  }}
}}
"""
