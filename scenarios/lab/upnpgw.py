"""A port-mapping gateway in the lab: Debian's miniupnpd (nftables backend) in a NAT namespace, serving
PCP / NAT-PMP (UDP 5351) and UPnP IGD (SSDP + HTTP) on the LAN side (docs/nat-lab.md §4.5).

miniupnpd refuses to map ports on an external address it considers reserved, and the RFC 5737
documentation blocks of the lab's internet segment are on its list ("Reserved / private IP address
... Port forwarding is impossible"). The gateway's WAN therefore gets an address outside those
blocks, `UPNP_PUBLIC`, on the same segment (on-link /32 routes at carol and the other router).
"""

from __future__ import annotations

import re
from typing import Any

from scenarios.lab.events import wait_files
from scenarios.lab.netns import Lab, LabError, read_text

UPNP_PUBLIC = "198.20.0.2"  # next to RFC 2544's 198.18.0.0/15, outside miniupnpd's reserved list
MINIUPNPD = "/usr/sbin/miniupnpd"

# the chains miniupnpd's nftables backend adds its rules to (its nft_init.sh layout, own table name)
MINIUPNPD_NFT = """table inet miniupnpd {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}
"""


def readdress_wan(lab: Lab, nat: str, public: str = UPNP_PUBLIC, others: tuple[str, ...] = ("carol",)) -> None:
    """Give `nat`'s wan0 the address `public` (its only one) and on-link routes both ways."""
    lab.run(nat, ["ip", "addr", "flush", "dev", "wan0"])
    lab.run(nat, ["ip", "addr", "add", f"{public}/32", "dev", "wan0"])
    lab.run(nat, ["ip", "route", "add", "203.0.113.0/24", "dev", "wan0", "src", public])
    for h in others:
        dev = "eth0" if h == "carol" else "wan0"
        lab.run(h, ["ip", "route", "add", f"{public}/32", "dev", dev])
    lab.addrs[nat] = public
    lab.info.setdefault("public", {})[nat] = public


class MiniUpnpd:
    """miniupnpd in `nat` (foreground, own pid file), NAT-PMP/PCP and UPnP on, LAN `lan_net` allowed."""

    def __init__(self, lab: Lab, nat: str, lan_net: str, min_lifetime: int = 120, max_lifetime: int = 86400) -> None:
        self.lab, self.nat = lab, nat
        self.dir = lab.host_dir(nat) / "miniupnpd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "miniupnpd.log"
        self.conf = self.dir / "miniupnpd.conf"
        self.conf.write_text(f"""ext_ifname=wan0
listening_ip=lan0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
min_lifetime={min_lifetime}
max_lifetime={max_lifetime}
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
allow 1024-65535 {lan_net} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
""")
        self.proc: Any = None

    def start(self, timeout: float = 10.0) -> MiniUpnpd:
        self.lab.nft(self.nat, MINIUPNPD_NFT)
        self.proc = self.lab.popen(self.nat, [MINIUPNPD, "-d", "-f", str(self.conf), "-P", str(self.dir / "pid")],
                                   self.log)
        wait_files(lambda: self.proc.poll() is not None or "Listening for NAT-PMP/PCP" in read_text(self.log),
                   timeout, [self.log], what="miniupnpd")
        text = read_text(self.log)
        if self.proc.poll() is not None or "Port forwarding is impossible" in text:
            raise LabError(f"miniupnpd did not start usable:\n{text}")
        return self

    def redirects(self) -> list[tuple[int, str, int]]:
        """The port mappings as miniupnpd's nftables rules hold them: (external port, internal ip, port)."""
        out = self.lab.run(self.nat, ["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"]).stdout
        return [(int(m[1]), m[2], int(m[3])) for m in
                re.finditer(r"dport (\d+) dnat ip to ([\d.]+):(\d+)", out)]

    def log_text(self) -> str:
        return read_text(self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
