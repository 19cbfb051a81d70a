"""A small simulated internet for three sans-IO engines (alice, bob, mediation server) with NATs
and a fake clock (design principle 14). Used by the test_mex_* files.

NAT model (RFC 4787): endpoint-independent mapping (port preserved when free) or symmetric
(address-and-port-dependent mapping, new port per destination); address-and-port-dependent filtering.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from core_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag
from core_ike.ike.config import AuthConfig, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine
from core_ike.ike.identity import Identity
from core_ike.me.checklist import CheckListConfig
from core_ike.me.client import MediationClient, MediationClientConfig
from core_ike.rng import SeededRng
from mediation_server.datarelay import DataRelay, RelayConfig
from mediation_server.registry import Registry
from mediation_server.relay import MediationServer

Addr = tuple[str, int]
MS_IP = "198.51.100.1"
A_IP, A_PUB = "10.1.0.2", "203.0.113.1"
B_IP, B_PUB = "10.2.0.2", "203.0.113.2"
B_SAME = "10.1.0.3"  # bob behind alice's NAT (behind-same-nat scenario)
IDS = {"alice": "alice@example.net", "bob": "bob@example.net", "ms": "medsrv.example.net"}
# NAT behaviour texts as RFC 5780 discovery reports them (core_ike/me/natinfo.py)
SYM_RANDOM = "mapping APDM, filtering APDF, port not preserved, random ports, no hairpinning"
PORT_RESTRICTED = "mapping EIM, filtering APDF, port preserving, no hairpinning"


class Nat:
    def __init__(self, public_ip: str, symmetric: bool = False) -> None:
        self.public_ip = public_ip
        self.symmetric = symmetric
        self._mapping: dict[tuple[Addr, Addr | None], int] = {}
        self._inside: dict[int, Addr] = {}
        self._allowed: dict[int, set[Addr]] = {}
        self._ports = itertools.count(50000)

    def outbound(self, src: Addr, dst: Addr) -> Addr:
        key = (src, dst if self.symmetric else None)
        port = self._mapping.get(key)
        if port is None:
            port = src[1] if src[1] not in self._inside and not self.symmetric else next(self._ports)
            self._mapping[key] = port
            self._inside[port] = src
        self._allowed.setdefault(port, set()).add(dst)
        return (self.public_ip, port)

    def inbound(self, src: Addr, port: int) -> Addr | None:
        return self._inside.get(port) if src in self._allowed.get(port, set()) else None


class RandomNat(Nat):
    """APDM with a random public port for each new mapping (nftables `masquerade fully-random`)."""

    def __init__(self, public_ip: str, seed: int, lo: int = 1024, hi: int = 65535) -> None:
        super().__init__(public_ip, symmetric=True)
        rnd = random.Random(seed)

        def ports() -> Any:
            while True:
                p = rnd.randint(lo, hi)
                if p not in self._inside:
                    yield p

        self._ports = ports()  # type: ignore[assignment]


@dataclass
class Node:
    name: str
    engine: Engine
    ip: str
    nat: Nat | None = None
    ext: Any = None  # MediationClient or MediationServer
    events: list[tuple[float, Any]] = field(default_factory=list)

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def first(self, kind: type) -> tuple[float, Any] | None:
        return next(((t, e) for t, e in self.events if isinstance(e, kind)), None)


Hook = Callable[[str, bytes, Addr, Addr], float | None]  # (sender, data, src, dst) -> extra delay / None


class Net:
    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.now = 1000.0
        self.nodes: dict[str, Node] = {}
        self._flight: list[tuple[float, int, str, bytes, Addr, Addr]] = []
        self._seq = itertools.count()
        self.hook: Hook | None = None  # return None to drop, or an extra delay
        self.wire: list[tuple[float, str, Addr, Addr, bytes]] = []  # (time, sender, public src, dst, data)

    def add(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    # --- moving packets ------------------------------------------------------------------------------
    def _flush(self) -> bool:
        moved = False
        for node in self.nodes.values():
            for data, local, remote in node.engine.datagrams_to_send():
                moved = True
                self.put(node, data, local, remote)
        return moved

    def put(self, node: Node, data: bytes, local: Addr, remote: Addr) -> None:
        """One datagram from `node` onto the wire now (an adapter's immediate send, e.g. `send_now`)."""
        src = local
        if node.nat is not None and not self._same_site(node, remote[0]):
            src = node.nat.outbound(local, remote)
        delay = self.latency
        if self.hook is not None:
            extra = self.hook(node.name, data, src, remote)
            if extra is None:
                return
            delay += extra
        self.wire.append((self.now, node.name, src, remote, data))
        heapq.heappush(self._flight, (self.now + delay, next(self._seq), node.name, data, src, remote))

    def _same_site(self, node: Node, ip: str) -> bool:
        return any(n.nat is node.nat and n.ip == ip for n in self.nodes.values())

    def _deliver(self, sender: str, data: bytes, src: Addr, dst: Addr) -> None:
        for n in self.nodes.values():
            if n.name == sender:
                continue
            if n.nat is None and n.ip == dst[0]:
                self._receive(n, data, src, dst)
            elif n.nat is not None and n.nat.public_ip == dst[0]:
                inside = n.nat.inbound(src, dst[1])
                if inside is not None and inside[0] == n.ip:
                    self._receive(n, data, src, inside)
            elif n.nat is not None and n.ip == dst[0] and self._same_site(self.nodes[sender], n.ip):
                self._receive(n, data, src, dst)

    def _receive(self, n: Node, data: bytes, src: Addr, local: Addr) -> None:
        relay = getattr(n.ext, "relay", None)
        if isinstance(relay, DataRelay) and local[1] not in (500, 4500):
            for out, port, dst in relay.receive(data, local[1], src, self.now):  # the MS's data relay
                self.wire.append((self.now, n.name, (n.ip, port), dst, out))
                heapq.heappush(self._flight, (self.now + self.latency, next(self._seq), n.name, out,
                                              (n.ip, port), dst))
            return
        if data == b"\xff":
            return  # NAT keepalive (RFC 3948 2.3)
        if local[1] == 4500:
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP: no data plane here
            data = data[4:]
        n.engine.receive(data, local, src, self.now)

    def _drain(self) -> None:
        for n in self.nodes.values():
            while (e := n.engine.next_event()) is not None:
                n.events.append((self.now, e))

    # --- the clock -----------------------------------------------------------------------------------
    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> float:
        """Advance up to `seconds`, delivering packets and firing timers; stop early when `until()`."""
        end = self.now + seconds
        for _ in range(200000):
            while self._flush():
                pass
            self._drain()
            if until is not None and until():
                return self.now
            times = [f[0] for f in self._flight[:1]]
            times += [t for n in self.nodes.values() if (t := n.engine.get_timer()) is not None]
            if not times or min(times) > end:
                self.now = end
                return self.now
            self.now = max(self.now, min(times))
            while self._flight and self._flight[0][0] <= self.now:
                _, _, sender, data, src, dst = heapq.heappop(self._flight)
                self._deliver(sender, data, src, dst)
            for n in self.nodes.values():
                t = n.engine.get_timer()
                if t is not None and t <= self.now:
                    n.engine.handle_timer(self.now)
        raise AssertionError("simulation did not settle")


def me_connect_request(data: bytes) -> bool:
    """Whether `data` (with or without the non-ESP marker) is an ME_CONNECT request's IKE header."""
    ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
    return len(ike) > 19 and ike[18] == ExchangeType.ME_CONNECT and not ike[19] & HeaderFlag.RESPONSE


def to_extra_port(n: Node, data: bytes, src: Addr, local: Addr, now: float) -> bool:
    """Whether a datagram for a peer went to one of its extra ports (not 500/4500), which take NAT-T
    datagrams (non-ESP marker) while open and drop everything else, keepalives included."""
    if local[1] in (500, 4500):
        return False
    if local[1] in n.engine.natt_extra and data != b"\xff" and data.startswith(NON_ESP_MARKER):
        n.engine.receive(data[4:], local, src, now)
    return True


class PoolNet(Net):
    """The internet above, where a node's extra ports are NAT-T sockets while open (closed: dropped)."""

    def _receive(self, n: Node, data: bytes, src: Addr, local: Addr) -> None:
        if n.name != "ms" and to_extra_port(n, data, src, local, self.now):
            return
        super()._receive(n, data, src, local)


class FakePool:
    """In-memory extra sockets: ports 40000 up, registered as NAT-T ports of the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.next = 40000
        self.open_now: set[tuple[str, int]] = set()
        self.opened = 0

    def open(self, ip: str, count: int) -> list[tuple[str, int]]:
        out = [(ip, self.next + i) for i in range(count)]
        self.next += count
        self.opened += count
        self.open_now.update(out)
        self.engine.natt_extra.update(p for _, p in out)
        return out

    def close(self, addrs: Iterable[tuple[str, int]]) -> None:
        for a in addrs:
            self.open_now.discard(a)
            self.engine.natt_extra.discard(a[1])


# --- the three hosts ------------------------------------------------------------------------------

def client_config(**kw: Any) -> MediationClientConfig:
    kw.setdefault("checks", CheckListConfig(transaction_timeout=5.0, responder_timeout=10.0))
    return MediationClientConfig(**kw)


def _peer_engine(me: str, other: str, ip: str, local_net: str, remote_net: str, *,
                 med_psk: str, med_child: bool, ccfg: MediationClientConfig) -> tuple[Engine, MediationClient]:
    creds = Credentials()
    creds.add_psk(med_psk, IDS[me], IDS["ms"])
    creds.add_psk("alice-and-bob-direct", IDS["alice"], IDS["bob"])
    my_id, ms_id, peer_id = (Identity.parse(IDS[x]) for x in (me, "ms", other))
    med = IkeConfig("medsrv", local_addrs=[ip], remote_addrs=[MS_IP], local=AuthConfig("psk", my_id),
                    remote=AuthConfig("psk", ms_id), mediation=True, keepalive_interval=20.0,
                    children=[ChildConfig("dummy")] if med_child else [])
    child = ChildConfig("net", local_ts=[local_net], remote_ts=[remote_net])
    mediated = IkeConfig(other, local_addrs=["%any"], remote_addrs=["%any"], local=AuthConfig("psk", my_id),
                         remote=AuthConfig("psk", peer_id), children=[child], mediated_by="medsrv",
                         mediation_peer=peer_id)
    engine = Engine([med, mediated], creds, rng=SeededRng(me))
    return engine, MediationClient(engine, ccfg)


def make_net(*, latency: float = 0.0, symmetric: tuple[bool, bool] = (False, False),  # noqa: PLR0913 - test options, all defaulted
             registry: Registry | None = None, ccfg: MediationClientConfig | None = None,
             with_server: bool = True, server_ext: bool = True, psk_alice: str = "alice-medsrv-secret",
             med_child: bool = False, same_nat: bool = False, relay: RelayConfig | None = None) -> Net:
    net = Net(latency)
    ccfg = ccfg or client_config()
    if with_server:
        creds = Credentials()
        creds.add_psk("alice-medsrv-secret", IDS["alice"], IDS["ms"])
        creds.add_psk("bob-medsrv-secret", IDS["bob"], IDS["ms"])
        cfg = IkeConfig("peers", local_addrs=[MS_IP], remote_addrs=["%any"],
                        local=AuthConfig("psk", Identity.parse(IDS["ms"])), remote=AuthConfig("psk"),
                        mediation=server_ext)
        eng = Engine([cfg], creds, rng=SeededRng("ms"))
        table = DataRelay(relay) if relay is not None else None
        srv = MediationServer(eng, registry, relay=table) if server_ext else None
        net.add(Node("ms", eng, MS_IP, None, srv))
    ea, ca = _peer_engine("alice", "bob", A_IP, "10.1.0.0/24", "10.2.0.0/24", med_psk=psk_alice,
                          med_child=med_child, ccfg=replace(ccfg, host_addresses=lambda: [A_IP]))
    b_ip = B_SAME if same_nat else B_IP
    eb, cb = _peer_engine("bob", "alice", b_ip, "10.2.0.0/24", "10.1.0.0/24", med_psk="bob-medsrv-secret",
                          med_child=False, ccfg=replace(ccfg, host_addresses=lambda: [b_ip]))
    nat_a = Nat(A_PUB, symmetric[0])
    net.add(Node("alice", ea, A_IP, nat_a, ca))
    net.add(Node("bob", eb, b_ip, nat_a if same_nat else Nat(B_PUB, symmetric[1]), cb))
    return net


def register(net: Net, *names: str) -> None:
    """Bring up the mediation SAs of `names` (default both peers)."""
    for name in names or ("alice", "bob"):
        net.nodes[name].engine.initiate("medsrv", now=net.now)
    net.run(5.0)


def mediate(net: Net) -> None:
    """alice asks for bob; run until both have the mediated CHILD_SA (asserted, with no MediationFailed)."""
    from core_ike.ike import events as ev
    from core_ike.me import events as mev

    alice, bob = net.nodes["alice"], net.nodes["bob"]
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool((alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
                                    or alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)


def probing_net(ccfg: MediationClientConfig, relay: bool = True, seed: int = 7) -> tuple[Net, FakePool]:
    """Many-port probing's setting: alice behind a port-restricted NAT, bob behind a random-port symmetric
    one (seeded), each told its NAT's behaviour; bob's extra sockets are a FakePool."""
    net = make_net(relay=RelayConfig(ports=(50000, 50009)) if relay else None, ccfg=ccfg, latency=0.005)
    net.__class__ = PoolNet
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    bob.nat = RandomNat(B_PUB, seed)
    alice.ext.config.nat_behaviour = lambda: PORT_RESTRICTED
    bob.ext.config.nat_behaviour = lambda: SYM_RANDOM
    pool = FakePool(bob.engine)
    bob.ext.probes.pool = pool
    return net, pool
