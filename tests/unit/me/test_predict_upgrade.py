"""Relay -> direct upgrade and the fall back (core_ike/me/upgrade.py), with three sans-IO engines, the
server's data relay and a fake clock: a mediated IKE_SA that came up through the relay (the direct path
blocked) moves to the direct pair once it works, and back to the relay when it stops working; the
peer follows each move (RFC 7296 §2.23) and the IKE_SA stays the same throughout."""

from __future__ import annotations

import sys
from pathlib import Path

from core_ike.me import events as mev
from core_ike.me.upgrade import PathChanged, UpgradeConfig
from mediation_server.datarelay import RelayConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))
from mex_net import A_PUB, B_PUB, MS_IP, client_config, make_net, register

FAST = UpgradeConfig(period=5.0, round_time=1.0, watch=1.0, misses=2)


def _block_direct(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
    """Drop what goes between the two NATs' public addresses (a firewall on the direct path)."""
    return None if {src[0], dst[0]} == {A_PUB, B_PUB} else 0.0


def _moves(node: object) -> list[PathChanged]:
    return node.of(PathChanged)  # type: ignore[attr-defined, no-any-return]


def test_relayed_tunnel_moves_to_direct_and_back_keeping_its_ike_sa() -> None:
    net = make_net(relay=RelayConfig(ports=(50000, 50009)), ccfg=client_config(upgrade=FAST), latency=0.005)
    net.hook = _block_direct
    register(net)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    up = alice.of(mev.MediatedEstablished)
    assert up and up[0].remote[0] == MS_IP, alice.events  # relayed through the server
    sa_a = alice.engine.by_uid[up[0].unique_id]
    sa_b = next(s for s in bob.engine.ike_sas() if s.established and s.name == "alice")
    relay_a, relay_b = sa_a.remote, sa_b.remote

    # blocked: the probe rounds find nothing, nothing moves
    net.run(12.0)
    assert _moves(alice) == [] and sa_a.remote == relay_a
    (conn,) = alice.ext.status().connections
    assert conn.path is not None and conn.path.startswith(f"relayed through {MS_IP}["), conn

    net.hook = None  # the direct path opens: the next round finds it
    net.run(10.0, until=lambda: bool(_moves(alice)))
    moved = _moves(alice)
    assert moved and moved[0].direct and moved[0].remote == (B_PUB, 4500), moved
    net.run(2.0)
    assert sa_a.remote == (B_PUB, 4500) and sa_b.remote == (A_PUB, 4500)  # bob followed
    assert sa_a.established and sa_b.established and _moves(bob) == []  # the controlling side moves
    (conn,) = alice.ext.status().connections
    assert conn.path == f"direct to {B_PUB}[4500] (moved off the relay)", conn

    net.hook = _block_direct  # the direct path dies: the watch rounds go unanswered
    net.run(10.0, until=lambda: len(_moves(alice)) > 1)
    back = _moves(alice)[1]
    assert not back.direct and back.remote == relay_a, back
    net.run(2.0)
    assert sa_a.remote == relay_a and sa_b.remote == relay_b  # bob followed over the relay
    assert sa_a.established and sa_b.established
    assert alice.engine.by_uid[up[0].unique_id] is sa_a  # one IKE_SA throughout


def test_the_watch_follows_a_rekeyed_ike_sa() -> None:
    """RFC 7296 §2.18: the IKE_SA that replaces the relayed one by a rekey is the one that moves."""
    net = make_net(relay=RelayConfig(ports=(50000, 50009)), ccfg=client_config(upgrade=FAST), latency=0.005)
    net.hook = _block_direct
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    up = alice.of(mev.MediatedEstablished)
    assert up and up[0].remote[0] == MS_IP, alice.events
    old = alice.engine.by_uid[up[0].unique_id]
    alice.engine.rekey_ike(old, net.now)
    net.run(2.0)
    new = next(s for s in alice.engine.ike_sas() if s.established and s.name == "bob")
    assert new.unique_id != old.unique_id and new.unique_id in alice.ext.paths.watches
    net.hook = None
    net.run(10.0, until=lambda: bool(_moves(alice)))
    moved = _moves(alice)
    assert moved and moved[0].ike_unique_id == new.unique_id and new.remote == (B_PUB, 4500), moved
