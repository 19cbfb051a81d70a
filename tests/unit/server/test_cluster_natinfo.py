"""The requester's NAT behaviour (N(IKEME_NAT_BEHAVIOUR), docs/protocol.md §11.17) across the servers of a
cluster: the forwarded ME_CONNECT and its forwarded answer carry it in the optional "nat" field, the
target's server passes it on only to our own clients (never to a peer without our Vendor ID), a value
that is not what natinfo.py sends is dropped with a log line, and a message without the field (a server
that does not know it) means none. End to end in memory: alice behind a port-restricted NAT at ms1 and
bob behind a random-port symmetric NAT at ms2 meet by many-port probing and connect directly."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from cluster_net import IDS, SERVERS, ClusterNet, peer, server, up
from mex_net import PORT_RESTRICTED, SYM_RANDOM, FakePool, Node, RandomNat, to_extra_port

from core_ike.codec.payloads import NotifyPayload, Payload
from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.birthday import ProbeEnded, ProbeStarted, Role
from core_ike.me.natinfo import IKEME_NAT_BEHAVIOUR, MAX_TEXT
from core_ike.me.tasks import MeSaState
from mediation_server import relay as relay_mod
from mediation_server.cluster.core import Cluster, ForwardedConnect, server_channel
from mediation_server.datarelay import RelayConfig

CID, KEY, EPS = b"\x01" * 4, b"\x02" * 16, (b"\x00\x01",)


# ---------------------------------------------------------------------------------------------- the message


def _connect_msg(nat: bytes | None) -> dict[str, Any]:
    a = Cluster("ms1")
    a.forward_connect("ms2", (3, b"alice@example.net"), "bob@example.net", response=False, connect_id=CID,
                      key=KEY, endpoints=EPS, nat=nat)
    ((channel, data),) = a.take_outbox()
    assert channel == server_channel("ms2")
    d: dict[str, Any] = json.loads(data)
    return d


def _receive(d: dict[str, Any]) -> Any:
    return Cluster("ms2").receive(json.dumps(d).encode())


def test_the_nat_behaviour_round_trips_and_its_absence_means_none() -> None:
    d = _connect_msg(SYM_RANDOM.encode())
    assert d["nat"] == SYM_RANDOM
    got = _receive(d)
    assert got == ForwardedConnect("ms1", (3, b"alice@example.net"), "bob@example.net", False, CID, KEY, EPS,
                                   SYM_RANDOM.encode())
    # without one the message is exactly what a server without the field sends and reads
    plain = _connect_msg(None)
    assert "nat" not in plain and {k: v for k, v in d.items() if k != "nat"} == plain
    assert _receive(plain).nat is None
    assert _receive({**plain, "nat": None}).nat is None


@pytest.mark.parametrize("value", ["x" * (MAX_TEXT + 1), "mapping EIM\x01", "mapping \u00e9", "", 57344,
                                   ["mapping EIM"], {"a": 1}, True])
def test_a_malformed_nat_field_is_dropped_with_a_log_line(value: object, caplog: pytest.LogCaptureFixture) -> None:
    d = {**_connect_msg(None), "nat": value}
    with caplog.at_level(logging.WARNING, "mediation_server.cluster"):
        got = _receive(d)
    assert isinstance(got, ForwardedConnect) and got.nat is None  # the ME_CONNECT itself goes on
    assert got.endpoints == EPS and got.connect_id == CID
    assert any("malformed NAT behaviour" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", [b"x" * (MAX_TEXT + 1), b"mapping\x00EIM", b"\xc3\xa9", b""])
def test_a_malformed_value_is_not_forwarded(value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mediation_server.cluster"):
        d = _connect_msg(value)
    assert "nat" not in d
    assert any("malformed NAT behaviour" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- in memory


class PoolClusterNet(ClusterNet):
    """A peer's extra ports take NAT-T datagrams (non-ESP marker) while open, nothing else."""

    def _receive(self, n: Node, data: bytes, src: tuple[str, int], local: tuple[str, int]) -> None:
        if n.name not in SERVERS and to_extra_port(n, data, src, local, self.now):
            return
        super()._receive(n, data, src, local)


Relayed = list[tuple[str, list[Payload]]]


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> Relayed:
    """Every ME_CONNECT a server relays to a peer: (server's target, payloads), as built."""
    out: Relayed = []
    real = relay_mod.build_relay

    def spy(req: Any, requester: Any, *, private: bool = False) -> list[Payload]:
        payloads = real(req, requester, private=private)
        out.append((req.peer.data.decode(), payloads))
        return payloads

    monkeypatch.setattr(relay_mod, "build_relay", spy)
    return out


def _nat_in(payloads: list[Payload]) -> bytes | None:
    return next((p.data for p in payloads if isinstance(p, NotifyPayload) and int(p.type) == IKEME_NAT_BEHAVIOUR),
                None)


def _forwarded(net: ClusterNet) -> list[dict[str, Any]]:
    return [json.loads(d) for _, ch, d in net.cluster_log if b'"connect"' in d and ch.startswith("ikeme.server.")]


def _net() -> PoolClusterNet:
    net = PoolClusterNet(latency=0.005)
    for s in ("ms1", "ms2", "ms3"):
        server(net, s, relay=RelayConfig(ports=(50000, 50099)))
    return net


def test_port_restricted_at_ms1_and_random_symmetric_at_ms2_probe_and_go_direct(relayed: Relayed) -> None:
    net = _net()
    alice = peer(net, "alice", ["ms1"], ["bob"])
    bob = peer(net, "bob", ["ms2"], ["alice"])
    bob.nat = RandomNat(bob.nat.public_ip, 7)  # type: ignore[union-attr]
    alice.ext.config.nat_behaviour = lambda: PORT_RESTRICTED
    bob.ext.config.nat_behaviour = lambda: SYM_RANDOM
    pool = FakePool(bob.engine)
    bob.ext.probes.pool = pool
    up(net, "alice", "bob")
    alice.ext.connect("bob", net.now)
    net.run(40.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    # the request ms1 -> ms2 carries alice's NAT, the answer ms2 -> ms1 bob's
    fwd = _forwarded(net)
    assert [(f["srv"], f["response"], f.get("nat")) for f in fwd] == [("ms1", False, PORT_RESTRICTED),
                                                                      ("ms2", True, SYM_RANDOM)]
    # and each server put it into the ME_CONNECT it relayed to its own client
    assert [(to, _nat_in(p)) for to, p in relayed] == [(IDS["alice"], PORT_RESTRICTED.encode()),
                                                       (IDS["bob"], SYM_RANDOM.encode())]
    assert alice.of(ProbeStarted)[0].role is Role.SPRAY and bob.of(ProbeStarted)[0].role is Role.OPEN
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote[0] not in SERVERS.values(), est  # direct, not through a server's relay
    sa_b = next(s for s in bob.engine.ike_sas() if s.established and s.name == "alice")
    assert sa_b.local in pool.open_now  # bob's end: the extra socket that met
    net.run(10.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)))
    (ca,), (cb,) = alice.of(ev.ChildSaEstablished), bob.of(ev.ChildSaEstablished)
    assert ca.keys.spi_out == cb.keys.spi_in
    assert all(e.ok for e in alice.of(ProbeEnded) + bob.of(ProbeEnded))


def test_a_peer_without_our_vendor_id_at_the_other_server_gets_none(relayed: Relayed) -> None:
    """bob at ms2 as a strongSwan peer (no IMPL_VENDOR_ID in its IKE_SA_INIT, as ms2 recorded it): alice's
    NAT crosses the cluster, but ms2 relays the ME_CONNECT to bob without it; bob's answer to alice does
    not carry one either (he sends none), and they still connect."""
    net = _net()
    alice = peer(net, "alice", ["ms1"], ["bob"])
    bob = peer(net, "bob", ["ms2"], ["alice"])
    alice.ext.config.nat_behaviour = lambda: PORT_RESTRICTED
    up(net, "alice", "bob")
    for sa in net.nodes["ms2"].engine.ike_sas():
        if sa.peer_id is not None and str(sa.peer_id) == IDS["bob"]:
            sa.extension(MeSaState).ours = False
    alice.ext.connect("bob", net.now)
    net.run(40.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    assert [(f["srv"], f.get("nat")) for f in _forwarded(net)] == [("ms1", PORT_RESTRICTED), ("ms2", None)]
    to_bob = [p for to, p in relayed if to == IDS["alice"]]  # ID_PEER is the requester: alice, toward bob
    assert len(to_bob) == 1 and _nat_in(to_bob[0]) is None
    assert not bob.of(ProbeStarted) and not alice.of(ProbeStarted)
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)


def test_a_malformed_value_from_another_server_does_not_reach_the_peer(relayed: Relayed,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    net = _net()
    bob = peer(net, "bob", ["ms2"], ["alice"])
    up(net, "bob")
    msg = {"t": "connect", "req": [3, IDS["alice"].encode().hex()], "target": IDS["bob"], "response": False,
           "cid": CID.hex(), "key": KEY.hex(), "eps": [e.hex() for e in _real_endpoints()], "srv": "ms1",
           "nat": "y" * 4096}
    with caplog.at_level(logging.WARNING, "mediation_server.cluster"):
        net.nodes["ms2"].ext.on_cluster_message(json.dumps(msg).encode(), net.now)
    net.run(1.0)
    assert any("malformed NAT behaviour" in r.getMessage() for r in caplog.records)
    ((to, payloads),) = relayed
    assert to == IDS["alice"] and _nat_in(payloads) is None  # the ME_CONNECT went on to bob, without it
    (asked,) = bob.of(mev.MediationRequested)  # bob took the request in
    assert asked.peer == IDS["alice"]


def _real_endpoints() -> tuple[bytes, ...]:
    from core_ike.constants import MeEndpointType
    from core_ike.me.endpoints import encode_endpoint, make_endpoint

    return (encode_endpoint(make_endpoint(MeEndpointType.SERVER_REFLEXIVE, "203.0.113.1", 4500)),)
