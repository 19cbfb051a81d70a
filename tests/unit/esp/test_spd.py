"""The userspace data plane's indexed policy table (core_ike/io/spd.py) against a brute-force
reference: an ordered list re-sorted (stably) on every insertion and scanned from the start, the
order RFC 4301 4.4.1 lookups rely on. Thousands of overlapping policies, deletions and re-insertions;
the order, the outbound lookups and the inbound checks must agree on every probe."""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any

import pytest

from core_ike.constants import EncrId
from core_ike.io.dataplane import (
    Direction,
    PolicyAction,
    PolicyParams,
    SaParams,
    TrafficSelector,
)
from core_ike.io.spd import PolicyTable
from core_ike.io.tsmatch import packet_flow, ts_match
from core_ike.io.userspace import UserspaceDataPlane


class Reference:
    """Installation order, stably sorted by the order key when read."""

    def __init__(self) -> None:
        self.installed: dict[PolicyParams, None] = {}
        self._sorted: list[PolicyParams] | None = None

    @property
    def policies(self) -> list[PolicyParams]:
        if self._sorted is None:
            self._sorted = sorted(self.installed, key=lambda q: (
                q.priority, -(q.remote.subnet.prefixlen + q.local.subnet.prefixlen), q.action == PolicyAction.TRAP))
        return self._sorted

    def add(self, p: PolicyParams) -> None:
        if p not in self.installed:
            self.installed[p] = None
            self._sorted = None

    def remove(self, p: PolicyParams) -> None:
        if self.installed.pop(p, 0) is None:
            self._sorted = None

    def lookup_out(self, *flow: Any) -> PolicyParams | None:
        return next((p for p in self.policies if p.direction == Direction.OUT and ts_match(p, *flow, out=True)), None)

    def inbound(self, reqid: int, *flow: Any) -> bool:
        return any(p.direction in (Direction.IN, Direction.FWD) and p.reqid == reqid and ts_match(p, *flow, out=False)
                   for p in self.policies)

    def ports(self) -> bool:
        return any(p.local.protocol or p.remote.protocol or not p.local.any_port or not p.remote.any_port
                   for p in self.policies)


V4 = [ipaddress.ip_network(n) for n in ("0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.3.0/24",
                                         "10.2.0.0/16", "192.0.2.0/24", "192.0.2.0/28", "198.51.100.0/24")]
V6 = [ipaddress.ip_network(n) for n in ("::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64")]


def _subnet(rng: random.Random, v6: bool) -> Any:
    if rng.random() < 0.5:  # a host inside one of the shared subnets (road warriors' virtual IPs)
        net = rng.choice(V6 if v6 else V4[1:])
        host = net.network_address + rng.randrange(min(net.num_addresses, 4096))
        return ipaddress.ip_network(f"{host}/{net.max_prefixlen}")
    return rng.choice(V6 if v6 else V4)


def _ts(rng: random.Random, net: Any) -> TrafficSelector:
    if rng.random() < 0.8:
        return TrafficSelector(net)
    proto = rng.choice([0, 6, 17])
    lo = rng.choice([0, 53, 80, 1000])
    return TrafficSelector(net, proto, lo, rng.choice([lo, lo + 100, 65535]))


def _policy(rng: random.Random) -> PolicyParams:
    v6 = rng.random() < 0.2
    local = _subnet(rng, v6 if rng.random() < 0.97 else not v6)  # a few mixed-family ones
    return PolicyParams(
        _ts(rng, local), _ts(rng, _subnet(rng, v6)),
        rng.choice([Direction.OUT, Direction.OUT, Direction.IN, Direction.FWD]),
        rng.randrange(1, 400),
        action=rng.choice([PolicyAction.PROTECT] * 4 + [PolicyAction.TRAP, PolicyAction.BYPASS, PolicyAction.DROP]),
        priority=rng.choice([0, 0, 0, 0, 5, 100]),
    )


def _probe(rng: random.Random, pols: list[PolicyParams]) -> tuple[Any, Any, int, int, int]:
    p = rng.choice(pols)
    if rng.random() < 0.8 and p.local.subnet.version == p.remote.subnet.version:
        nets = (p.local.subnet, p.remote.subnet)
    else:
        nets = (rng.choice(V4[1:]), rng.choice(V4[1:]))
    addrs = [n.network_address + rng.randrange(min(n.num_addresses, 1 << 20)) for n in nets]
    proto = rng.choice([1, 6, 17])
    ports = (rng.choice([0, 53, 80, 1050, 40000]), rng.choice([0, 53, 80, 1050, 40000])) if proto != 1 else (0, 0)
    return addrs[0], addrs[1], proto, *ports


def test_five_thousand_policies_agree_with_the_brute_force_reference() -> None:
    rng = random.Random(4301)
    table, ref = PolicyTable(), Reference()
    pols = [_policy(rng) for _ in range(5000)]
    pols += rng.sample(pols, 200)  # installed twice: kept once, in its first place
    for p in pols:
        table.add(p)
        ref.add(p)
    for p in rng.sample(pols, 1500):  # deletions, some of them twice
        table.remove(p)
        ref.remove(p)
    for p in rng.sample(pols, 500):  # re-inserted: back at the end of their order key
        table.add(p)
        ref.add(p)
    assert len(table) == len(ref.policies) > 3000
    assert list(table) == ref.policies
    assert table.ports == ref.ports()
    hits = 0
    for _ in range(1500):
        flow = _probe(rng, pols)
        want = ref.lookup_out(*flow)
        assert table.lookup_out(*flow) is want, flow
        hits += want is not None
        # outbound flow seen from the other side: src is the remote address
        back = (flow[1], flow[0], flow[2], flow[4], flow[3])
        reqid = rng.randrange(1, 400)
        assert any(ts_match(p, *back, out=False) for p in table.inbound(reqid)) == ref.inbound(reqid, *back)
    assert hits > 400  # the probes exercise matches, not only misses
    for p in list(ref.policies):
        assert table.remove(p)
    assert not list(table) and not table.ports and len(table) == 0 and not table.remove(pols[0])


def _ipv4(src: Any, dst: Any) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 1, 0, src.packed, dst.packed) + b"x" * 8


def test_the_data_plane_picks_the_sa_of_the_reference_policy() -> None:
    """Through UserspaceDataPlane (no TUN device): install, outbound SA choice, deletion."""
    rng = random.Random(7296)
    dp, ref = UserspaceDataPlane(lambda d, a: None), Reference()
    pols = [p for p in (_policy(rng) for _ in range(3000)) if p.local.subnet.version == p.remote.subnet.version == 4]
    for p in pols:
        dp.install_policy(p)
        ref.add(p)
    for reqid in range(1, 400, 2):  # half the reqids have an outbound SA
        dp.install_sa(SaParams(0x1000 + reqid, Direction.OUT, "192.0.2.1", "192.0.2.2",
                               EncrId.AES_GCM_16, 128, bytes(20), encap=True, reqid=reqid))
    for p in rng.sample(pols, 700):
        dp.delete_policy(p)
        ref.remove(p)
    assert dp._policies == ref.policies
    for _ in range(1000):
        pkt = _ipv4(*_probe(rng, pols)[:2])
        flow = packet_flow(pkt)
        assert flow is not None
        want = ref.lookup_out(*flow)
        st = dp._lookup_out(pkt)
        if want is None or want.action in (PolicyAction.BYPASS, PolicyAction.DROP) or want.reqid % 2 == 0:
            assert st is None
        else:
            assert st is not None and st.params.reqid == want.reqid


def test_outbound_sa_per_reqid_falls_back_to_the_newest_left() -> None:
    """Make-before-break (RFC 7296 §2.8): the newest outbound SA of a reqid carries its traffic; deleting
    it falls back to the newest one left, deleting an older one changes nothing; other reqids untouched."""
    now = [0.0]
    dp = UserspaceDataPlane(lambda d, a: None, clock=lambda: now[0])

    def out(spi: int, reqid: int) -> SaParams:
        return SaParams(spi, Direction.OUT, "192.0.2.1", "192.0.2.2", EncrId.AES_GCM_16, 128, bytes(20),
                        encap=True, reqid=reqid)

    for reqid in range(1, 2001):
        dp.install_sa(out(0x10000 + reqid, reqid))
    for spi in (0x101, 0x102, 0x103):  # reqid 7: three generations, the last one newest
        now[0] += 1
        dp.install_sa(out(spi, 7))

    def current(reqid: int) -> int | None:
        st = dp._out_by_reqid.get(reqid)
        return None if st is None else st.params.spi

    assert current(7) == 0x103
    dp.delete_sa(0x102, Direction.OUT)  # an older one
    assert current(7) == 0x103
    dp.delete_sa(0x103, Direction.OUT)
    assert current(7) == 0x101
    dp.delete_sa(0x101, Direction.OUT)
    dp.delete_sa(0x10007, Direction.OUT)
    assert current(7) is None and 7 not in dp._outs
    dp.install_sa(out(0x10008, 9))  # the same SPI again, now of another reqid: it replaces that SA
    dp.delete_sa(0x10008, Direction.OUT)
    assert current(9) == 0x10009 and 0x10008 not in dp._outs.get(8, {})
    assert all(current(r) == 0x10000 + r for r in range(1, 2001) if r not in (7, 8, 9))


def test_selectors_and_policies_hash_and_compare_by_their_fields() -> None:
    """TrafficSelector and PolicyParams keep their hash (computed once): equal ones hash alike and find each
    other in the table's dicts, a copy with one field changed (dataclasses.replace, as a path move does)
    is another policy."""
    import dataclasses
    import pickle

    a, b = TrafficSelector.parse("10.1.0.0/24"), TrafficSelector.parse("10.1.0.7/24")
    assert a == b and hash(a) == hash(b) and a != TrafficSelector.parse("10.1.0.0/24", 6)
    p = PolicyParams(a, TrafficSelector.parse("10.2.0.0/16"), Direction.OUT, 7, "192.0.2.1", "192.0.2.2")
    q = PolicyParams(b, TrafficSelector.parse("10.2.0.0/16"), Direction.OUT, 7, "192.0.2.1", "192.0.2.2")
    assert p == q and hash(p) == hash(q) and "_hash" not in repr(p)
    moved = dataclasses.replace(p, tunnel_dst="192.0.2.9")
    assert moved != p and {p: 1}.get(moved) is None and {p: 1}[q] == 1
    assert pickle.loads(pickle.dumps(p)) == p and hash(pickle.loads(pickle.dumps(p))) == hash(p)
    t = PolicyTable()
    assert t.add(p) and not t.add(q) and q in t and moved not in t
    assert t.remove(q) and len(t) == 0


def test_selector_text_parsed_as_ipaddress_parses_it() -> None:
    """dataplane.network: the network ipaddress.ip_network(text, strict=False) gives, or its ValueError."""
    from core_ike.io.dataplane import network

    rng = random.Random(5)
    texts = ["10.201.0.5/32", "10.0.0.1", "0.0.0.0/0", "255.255.255.255/32", "10.1.2.3/24", "10.1.2.3/032",
             "10.0.0.0/255.255.255.0", "fd00::1/64", "::/0", "fd00::5", "::ffff:10.0.0.1/128"]
    bad = ["10.0.0.0/33", "10.0.0.0/", "01.2.3.4/32", "10.0.0/24", "10.0.0.0.0/8", "256.0.0.0/8", " 10.0.0.0/8",
           "10.0.0.0/8 ", "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.1\x00/32", "10.0.0.0/\u0663", "1\u0660.0.0.0/8", "0x0a.0.0.0/8",
           "10.0.0.00/8", "", "/8", "fd00::/129"]
    for _ in range(2000):
        texts.append(f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randrange(33)}")
    for t in texts:
        assert network(t) == ipaddress.ip_network(t, strict=False), t
        assert type(network(t)) is type(ipaddress.ip_network(t, strict=False))
    for t in bad:
        with pytest.raises(ValueError):
            ipaddress.ip_network(t, strict=False)
        with pytest.raises(ValueError):
            network(t)
