"""The simulated internet of tests/unit/me_ext/mex_net.py with three mediation servers of one cluster:
alice configured with server 1, bob with server 2 (or any, per test); the cluster's engine is modelled as
reliable, ordered delivery of each server's outbox between two steps of the clock; a registration's "up"
(the SEQUENCE pseudo-channel) gets the engine's next number as redis_bus.py's script gives it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))

from mex_net import IDS, Nat, Net, Node, client_config

from core_ike.ike.config import AuthConfig, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine
from core_ike.ike.identity import Identity
from core_ike.me.client import MediationClient
from core_ike.rng import SeededRng
from mediation_server.cluster.core import PRESENCE, SEQUENCE, Cluster, server_channel
from mediation_server.datarelay import DataRelay, RelayConfig
from mediation_server.relay import MediationServer

SERVERS = {"ms1": "198.51.100.1", "ms2": "198.51.100.2", "ms3": "198.51.100.3"}
PEERS = {"alice": ("10.1.0.2", "203.0.113.1", "10.1.0.0/24"), "bob": ("10.2.0.2", "203.0.113.2", "10.2.0.0/24"),
         "carol": ("10.3.0.2", "203.0.113.3", "10.3.0.0/24")}
IDS = {**IDS, "carol": "carol@example.net"}


class ClusterNet(Net):
    """Moves the servers' cluster messages as part of the packet flush; `engine_up` False drops them."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(latency)
        self.engine_up = True
        self.cluster_log: list[tuple[str, str, bytes]] = []
        self.seq = 1000  # the engine's last number (redis_bus.py SEQUENCE_SCRIPT)

    def _flush(self) -> bool:
        moved = super()._flush()
        for node in list(self.nodes.values()):
            cl = getattr(node.ext, "cluster", None)
            if not isinstance(cl, Cluster):
                continue
            for channel, data in cl.take_outbox():
                if not self.engine_up:
                    continue
                moved = True
                seq = None
                if channel == SEQUENCE:
                    self.seq += 1
                    seq, channel, data = self.seq, PRESENCE, data + b"%d}" % self.seq
                self.cluster_log.append((node.name, channel, data))
                for other in self.nodes.values():
                    ocl = getattr(other.ext, "cluster", None)
                    if isinstance(ocl, Cluster) and (channel == PRESENCE or channel == server_channel(ocl.name)):
                        other.ext.on_cluster_message(data, self.now)
                if seq is not None:
                    node.ext.on_sequenced(seq, self.now)
        return moved


def server(net: ClusterNet, name: str, *, relay: RelayConfig | None = None,
           clock_offset: float = 0.0) -> Node:
    """`relay`: the server's data relay; `clock_offset`: its wall clock's error (the registry's time)."""
    creds = Credentials()
    for p in PEERS:
        creds.add_psk(f"{p}-medsrv-secret", IDS[p], IDS["ms"])
    cfg = IkeConfig("peers", local_addrs=[SERVERS[name]], remote_addrs=["%any"],
                    local=AuthConfig("psk", Identity.parse(IDS["ms"])), remote=AuthConfig("psk"), mediation=True)
    eng = Engine([cfg], creds, rng=SeededRng(name))
    net.cluster_log = []
    ext = MediationServer(eng, cluster=Cluster(name), relay=DataRelay(relay) if relay is not None else None,
                          clock=lambda now: now + clock_offset)
    return net.add(Node(name, eng, SERVERS[name], None, ext))


def peer(net: ClusterNet, me: str, servers: list[str], others: list[str], *, symmetric: bool = False) -> Node:
    ip, pub, lan = PEERS[me]
    creds = Credentials()
    creds.add_psk(f"{me}-medsrv-secret", IDS[me], IDS["ms"])
    for o in others:
        creds.add_psk("direct-secret", IDS[me], IDS[o])
    my_id, ms_id = Identity.parse(IDS[me]), Identity.parse(IDS["ms"])
    med = IkeConfig("medsrv", local_addrs=[ip], remote_addrs=[SERVERS[s] for s in servers],
                    local=AuthConfig("psk", my_id), remote=AuthConfig("psk", ms_id), mediation=True,
                    keepalive_interval=20.0)
    confs = [med]
    for o in others:
        confs.append(IkeConfig(o, local_addrs=["%any"], remote_addrs=["%any"], local=AuthConfig("psk", my_id),
                               remote=AuthConfig("psk", Identity.parse(IDS[o])),
                               children=[ChildConfig("net", local_ts=[lan], remote_ts=[PEERS[o][2]])],
                               mediated_by="medsrv", mediation_peer=Identity.parse(IDS[o])))
    engine = Engine(confs, creds, rng=SeededRng(me))
    client = MediationClient(engine, client_config(host_addresses=lambda: [ip]))
    return net.add(Node(me, engine, ip, Nat(pub, symmetric), client))


def up(net: ClusterNet, *names: str) -> None:
    for n in names:
        net.nodes[n].engine.initiate("medsrv", now=net.now)
    net.run(5.0)


def ext(node: Node) -> Any:
    return node.ext
