"""Our mediation server and clients on a `nat_lab`: configs, start, and the checks every scenario makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scenarios.lab.iked import Iked
from scenarios.lab.netns import Lab
from scenarios.lab.topologies import CAROL, NAT_PUBLIC

PSK = {"alice": "alice-medsrv-secret-0123456789", "bob": "bob-medsrv-secret-0123456789",
       "venus": "venus-medsrv-secret-0123456789"}
P2P_PSK = "peer-to-peer-secret-0123456789"
LAN = {"alice": "10.1.0.2", "bob": "10.2.0.2", "venus": "10.1.0.3"}
PUBLIC = {"alice": NAT_PUBLIC["natA"], "venus": NAT_PUBLIC["natA"], "bob": NAT_PUBLIC["natB"]}  # their NAT's


def server_toml(peers: list[str], policy: str = "all", extra: str = "") -> str:
    secrets = "".join(f'[[secrets.ike]]\nid = ["carol@med", "{p}@med"]\nsecret = "{PSK[p]}"\n' for p in peers)
    return f"""[daemon]
listen = ["{CAROL}"]
control = "@CTL@"
dataplane = "none"

[mediation]
policy = "{policy}"
{extra}
{secrets}
[connections.medsrv]
local_addrs = ["{CAROL}"]
mediation = true
local = {{ auth = "psk", id = "carol@med" }}
remote = {{ auth = "psk", id = "%any" }}
"""


def client_toml(me: str, peers: list[str], ts: dict[str, str] | None = None, start: bool = False,
                client: str = "", mediation_extra: str = "") -> str:
    """`mediation_extra`: more settings of the mediation connection (e.g. dpd_delay, retransmit)."""
    ts = ts or LAN
    out = [f"""[daemon]
listen = ["{LAN[me]}"]
control = "@CTL@"
dataplane = "userspace"

[client]
{client}
[[secrets.ike]]
id = ["{me}@med", "carol@med"]
secret = "{PSK[me]}"

[[secrets.ike]]
secret = "{P2P_PSK}"

[connections.medsrv]
remote_addrs = ["{CAROL}"]
mediation = true
local = {{ auth = "psk", id = "{me}@med" }}
remote = {{ auth = "psk", id = "carol@med" }}
{mediation_extra}
"""]
    for p in peers:
        out.append(f"""[connections.{p}]
remote_addrs = ["%any"]
mediated_by = "medsrv"
mediation_peer = "{p}@med"
local = {{ auth = "psk", id = "{me}@p2p" }}
remote = {{ auth = "psk", id = "{p}@p2p" }}
[connections.{p}.children.net]
local_ts = ["{ts[me]}/32"]
remote_ts = ["{ts[p]}/32"]
start_action = "{'start' if start else 'none'}"
""")
    return "\n".join(out)


@dataclass
class OurMediation:
    """carol = our mediation server; alice, bob (, venus) = our mediation clients."""

    lab: Lab
    peers: list[str] = field(default_factory=lambda: ["alice", "bob"])
    server: Iked | None = None
    clients: dict[str, Iked] = field(default_factory=dict)

    def start_server(self, policy: str = "all", extra: str = "") -> Iked:
        self.server = Iked(self.lab, "carol", server_toml(self.peers, policy, extra), name="medsrv",
                           module="mediation_server").start()
        return self.server

    def start_client(self, me: str, ts: dict[str, str] | None = None, start: bool = False,
                     client: str = "", mediation_extra: str = "") -> Iked:
        others = [p for p in self.peers if p != me]
        c = Iked(self.lab, me, client_toml(me, others, ts, start, client, mediation_extra), name="medcli",
                 module="mediation_client").start()
        self.clients[me] = c
        return c

    def wait_registered(self, *peers: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The server's peers once ``<peer>@med`` of every one of ``peers`` is registered."""
        assert self.server is not None
        return self.server.wait_peers({f"{p}@med" for p in peers}, timeout)

    def stop(self) -> None:
        for c in self.clients.values():
            c.stop()
        if self.server is not None:
            self.server.stop()


def server_toml_pubkey(keyid_identity: str, database: str, key_file: str = "server.key", policy: str = "all",
                       extra: str = "") -> str:
    """carol with its own RSA key (ID_KEY_ID `keyid_identity`), peers from the portal's med_db."""
    return f"""[daemon]
listen = ["{CAROL}"]
control = "@CTL@"
dataplane = "none"

[mediation]
database = "{database}"
policy = "{policy}"
{extra}
[[secrets.private]]
file = "{key_file}"

[connections.medsrv]
local_addrs = ["{CAROL}"]
mediation = true
local = {{ auth = "pubkey", id = "{keyid_identity}" }}
remote = {{ auth = "pubkey", id = "%any" }}
"""


def client_toml_db(me: str, database: str, client: str = "") -> str:
    """A mediation client configured entirely from its client manager's database."""
    return f"""[daemon]
listen = ["{LAN[me]}"]
control = "@CTL@"
dataplane = "userspace"

[client]
database = "{database}"
{client}
"""


# -- the checks every mediation scenario makes ----------------------------------------------------------


def show_log(story: Any, text: str, keys: tuple[str, ...], who: str = "") -> None:
    """Tell the lines of a daemon log that contain one of `keys`."""
    for line in text.splitlines():
        if any(k in line for k in keys):
            story.say(f"{who}: {line}" if who else line)


def mediated_sas(a: Iked, b: Iked, a_conn: str, b_conn: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until `a` lists its mediated IKE_SA `a_conn` with a CHILD_SA and `b` its `b_conn`; return both."""
    sas_a = a.wait_sas(lambda s: any(x["name"] == a_conn and x["child-sas"] for x in s))
    sas_b = b.wait_sas(lambda s: any(x["name"] == b_conn and x["child-sas"] for x in s))
    (sa_a,) = [x for x in sas_a if x["name"] == a_conn]
    (sa_b,) = [x for x in sas_b if x["name"] == b_conn]
    return sa_a, sa_b


def say_sa(story: Any, who: str, sa: dict[str, Any]) -> None:
    c = sa["child-sas"][0]
    story.say(f"{who + ':':<6} {sa['local-host']}[{sa['local-port']}] ... {sa['remote-host']}[{sa['remote-port']}] "
              f"CHILD_SA {c['spi-in']}_i {c['spi-out']}_o")


def ping_both(lab: Lab, a: str, b: str, addr: dict[str, str], count: int = 3) -> tuple[int, int]:
    """Replies received a->b and b->a (`addr`: each host's tunnel address)."""
    ab = lab.ping(a, addr[b], source=addr[a], count=count, interval=0.1)
    ba = lab.ping(b, addr[a], source=addr[b], count=count, interval=0.1)
    return ab[1], ba[1]
