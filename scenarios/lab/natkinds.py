"""NAT behaviours of the lab's routers in nftables (docs/nat-lab.md §4.4), in RFC 4787 / RFC 5780 terms.

| kind | mapping | filtering | how |
|---|---|---|---|
| `eim`, `port-restricted` | EIM, port preserving | APDF | masquerade: only conntrack replies come in |
| `full-cone` | EIM, port preserving | EIF | masquerade + new inbound UDP forwarded to the LAN host, same port |
| `address-restricted` | EIM, port preserving | ADF | full-cone + inbound only from addresses the LAN has sent to |
| `symmetric`, `symmetric-random` | APDM, random ports | APDF | masquerade fully-random |
| `symmetric-sequential` | APDM, sequential ports | APDF | snat to the next port of a counter for each new flow |
| `none` | none (routed) | none | no translation: the LAN is routed, the others get a route to it |

Linux conntrack maps per flow; endpoint-independent *filtering* has no kernel switch, so the EIF and
ADF kinds forward every new inbound UDP datagram to port P to the LAN host's port P (their single LAN
host: `lan_host`), which is what a full-cone NAT does for a host whose mappings preserve the port.
"""

from __future__ import annotations

from typing import Any

KINDS = ("eim", "port-restricted", "full-cone", "address-restricted", "symmetric", "symmetric-random",
         "symmetric-sequential", "none")

# RFC 5780 terms each kind is built to have (what discovery must find)
EXPECTED: dict[str, tuple[str, str]] = {
    "eim": ("EIM", "APDF"), "port-restricted": ("EIM", "APDF"), "full-cone": ("EIM", "EIF"),
    "address-restricted": ("EIM", "ADF"), "symmetric": ("APDM", "APDF"), "symmetric-random": ("APDM", "APDF"),
    "symmetric-sequential": ("APDM", "APDF"), "none": ("none", "none"),
}

SEQUENTIAL_BASE = 20000  # first port of the symmetric-sequential counter
SEQUENTIAL_SPAN = 1000


def _seq_map() -> str:
    return ", ".join(f"{i} : {SEQUENTIAL_BASE + i}" for i in range(SEQUENTIAL_SPAN))


def nat_ruleset(kind: str, public: str, lan_host: str) -> str:
    """The `table ip nat` (and, for ADF, `table inet fw_adf`) ruleset of one router."""
    if kind not in KINDS:
        raise ValueError(f"unknown NAT kind {kind!r} ({', '.join(KINDS)})")
    post = {
        "eim": 'oifname "wan0" masquerade',
        "port-restricted": 'oifname "wan0" masquerade',
        "full-cone": 'oifname "wan0" masquerade',
        "address-restricted": 'oifname "wan0" masquerade',
        "symmetric": 'oifname "wan0" masquerade fully-random',
        "symmetric-random": 'oifname "wan0" masquerade fully-random',
        # each new flow (conntrack entry) takes the counter's next port: APDM with a step of 1 per flow
        # (through a map: a numgen result used as a port directly would be in host byte order)
        "symmetric-sequential": f'oifname "wan0" meta l4proto udp snat to {public} : numgen inc mod '
                                f'{SEQUENTIAL_SPAN} map {{ {_seq_map()} }}\n    oifname "wan0" masquerade',
        "none": "",
    }[kind]
    pre = ""
    if kind in ("full-cone", "address-restricted"):
        # RFC 4787 §5 EIF: any external endpoint reaches the mapped port; only new flows pass this chain
        pre = f'iifname "wan0" meta l4proto udp udp dport 1024-65535 dnat to {lan_host}'
    out = f"""table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {post}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {pre}
  }}
}}
"""
    if kind == "address-restricted":
        # RFC 4787 §5 ADF: inbound only from an address the LAN has sent to (any port)
        out += """table inet fw_adf {
  set contacted { type ipv4_addr; flags dynamic,timeout; timeout 10m; }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "lan0" oifname "wan0" update @contacted { ip daddr }
    iifname "wan0" ct state new ip saddr != @contacted drop
  }
}
"""
    return out


def routes_for_unnatted(lab: Any, nat: str, lan_net: str, public: str, others: list[str]) -> None:
    """Kind `none`: the LAN behind `nat` is routed; `others` (carol, the other router) reach it via
    `nat`'s public address."""
    del nat
    for h in others:
        lab.route(h, lan_net, public)
