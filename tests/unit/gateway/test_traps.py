"""ipsec.conf auto=route (core_ike/daemon/traps.py): the conversion, the trap policies in a real userspace data
plane (no TUN: packets handed to its outbound path), and the acquire that starts the CHILD_SA through
the real engine, once per attempt; `ikeme-ipsec status` lists the routed connections."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from core_ike.daemon.traps import TRAP_REQID_BASE, TrapManager
from core_ike.errors import LocalError
from core_ike.ike import events as ev
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine
from core_ike.ike.state import ChildSa
from core_ike.io.dataplane import Acquire, Direction, PolicyAction
from core_ike.io.userspace import UserspaceDataPlane
from gateway.ipsec_cmd import routed_lines
from gateway.ipsecconf import parse_conf
from gateway.ipsecconvert import convert_conf
from tests.unit.fakes import Clock

CONF = """
conn %default
    authby=psk
    left=192.0.2.1
    right=192.0.2.2
    leftsubnet=10.94.1.0/24

conn net
    rightsubnet=10.94.2.0/24,10.94.3.0/24
    auto=route

conn host
    rightsubnet=10.94.5.0/24
    rightprotoport=tcp/443
    auto=route

conn plain
    rightsubnet=10.94.9.0/24
    auto=add
"""


def udp(src: str, dst: str) -> bytes:
    payload = struct.pack(">HH", 5000, 6000) + b"x" * 8
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + payload


def setup(conf: str = CONF) -> tuple[Engine, UserspaceDataPlane, TrapManager, Clock]:
    configs = convert_conf(parse_conf(conf), Path("/nonexistent"), local_addresses=["192.0.2.1"])
    creds = Credentials()
    creds.add_psk("trap-secret", configs[0].local.id, configs[0].remote.id)
    engine = Engine(configs, creds)
    clock = Clock(50.0)
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    traps = TrapManager(engine, dp, lambda remote: "192.0.2.1")
    traps.sync(engine.configs)
    return engine, dp, traps, clock


def drain(dp: UserspaceDataPlane) -> list[Acquire]:
    out = []
    while (e := dp.next_event()) is not None:
        assert isinstance(e, Acquire)
        out.append(e)
    return out


def test_auto_route_loads_as_a_trap_and_needs_the_peers_address() -> None:
    configs = convert_conf(parse_conf(CONF), Path("/nonexistent"), local_addresses=["192.0.2.1"])
    assert [(c.name, c.children[0].start_action) for c in configs] == [("net", "trap"), ("host", "trap"),
                                                                       ("plain", "none")]
    with pytest.raises(LocalError, match="conn x: auto=route needs right= the peer's address"):
        convert_conf(parse_conf("conn x\n    left=192.0.2.1\n    right=%any\n    authby=psk\n    auto=route\n"),
                     Path("/nonexistent"), local_addresses=["192.0.2.1"])


def test_routed_connections_get_trap_policies_dynamic_resolved() -> None:
    _, dp, traps, _ = setup()
    pols = [(str(p.local.subnet), str(p.remote.subnet), p.remote.protocol, p.remote.port_start, p.reqid, p.action,
             p.direction, p.tunnel_dst) for p in dp._policies]
    assert sorted(pols) == sorted([
        ("10.94.1.0/24", "10.94.2.0/24", 0, 0, TRAP_REQID_BASE + 1, PolicyAction.TRAP, Direction.OUT, "192.0.2.2"),
        ("10.94.1.0/24", "10.94.3.0/24", 0, 0, TRAP_REQID_BASE + 1, PolicyAction.TRAP, Direction.OUT, "192.0.2.2"),
        ("10.94.1.0/24", "10.94.5.0/24", 6, 443, TRAP_REQID_BASE + 2, PolicyAction.TRAP, Direction.OUT, "192.0.2.2"),
    ])
    assert traps.routed() == {"net": ["net"], "host": ["host"]}
    assert traps.unroute("net") == 1 and traps.unroute("net") == 0
    assert {p.reqid for p in dp._policies} == {TRAP_REQID_BASE + 2}
    assert traps.route("plain") == ["plain"]  # `ipsec route` works on any connection
    assert traps.unroute("plain") == 1
    with pytest.raises(LocalError, match="no connection named 'nosuch'"):
        traps.route("nosuch")


def test_first_packet_starts_the_child_sa_once_per_attempt() -> None:
    engine, dp, traps, clock = setup()
    dp._outbound(udp("10.94.1.5", "10.94.3.9"), clock.t)  # dropped: no SA; reported
    (acq,) = drain(dp)
    assert acq.reqid == TRAP_REQID_BASE + 1 and (acq.src, acq.dst) == ("10.94.1.5", "10.94.3.9")
    assert traps.on_acquire(acq, clock.t)
    (sa,) = engine.ike_sas()
    assert sa.config.name == "net" and sa.is_original_initiator and sa.remote[0] == "192.0.2.2"
    ((data, _, remote),) = engine.datagrams_to_send()  # its IKE_SA_INIT request
    assert remote == ("192.0.2.2", 500) and data[18] == 34  # RFC 7296 3.1: exchange type IKE_SA_INIT
    # more traffic a second later: asked again, ignored while the attempt is under way
    clock.t += 1.0
    dp.check_timers(clock.t)
    dp._outbound(udp("10.94.1.5", "10.94.3.9"), clock.t)
    (again,) = drain(dp)
    assert not traps.on_acquire(again, clock.t) and len(engine.ike_sas()) == 1
    # the attempt failed: the next acquire starts another one
    traps.on_event(ev.IkeSaFailed("net", sa.unique_id, "no response", initiator=True))
    engine.terminate(sa, clock.t)
    assert traps.on_acquire(again, clock.t + 1)
    # a trap of another connection, and an acquire no trap of ours made
    assert traps.on_acquire(Acquire(TRAP_REQID_BASE + 2, "10.94.1.5", "10.94.5.1", 6), clock.t + 1)
    assert not traps.on_acquire(Acquire(7, "10.94.1.5", "10.9.9.9", 6), clock.t + 1)
    assert traps.acquires == 3 and traps.ignored == 2


def test_a_reload_routes_changed_and_new_connections_and_unroutes_the_rest() -> None:
    engine, dp, traps, _ = setup()
    net_reqid = traps.traps[("net", "net")].reqid
    changed = convert_conf(parse_conf(CONF.replace("10.94.3.0/24", "10.94.4.0/24").replace(
        "rightprotoport=tcp/443\n    auto=route", "rightprotoport=tcp/443\n    auto=add")),
        Path("/nonexistent"), local_addresses=["192.0.2.1"])
    engine.configs[:] = changed
    traps.sync(engine.configs)
    assert traps.routed() == {"net": ["net"]}
    assert sorted(str(p.remote.subnet) for p in dp._policies) == ["10.94.2.0/24", "10.94.4.0/24"]
    assert traps.traps[("net", "net")].reqid == net_reqid  # one reqid per CHILD_SA config
    traps.unroute_all()
    assert dp._policies == []


def test_status_lists_routed_connections_as_strongswan_does() -> None:
    routed = [{"name": "net", "child": "net", "reqid": TRAP_REQID_BASE + 1, "local-ts": ["10.94.1.0/24"],
               "remote-ts": ["10.94.2.0/24", "10.94.3.0/24"]}]
    assert routed_lines(routed) == [
        "Routed Connections:",
        "         net{1}:  ROUTED, TUNNEL, reqid 1073741825",
        "         net{1}:   10.94.1.0/24 === 10.94.2.0/24 10.94.3.0/24"]
    assert routed_lines(routed, "other") == []


def test_an_sql_child_config_with_start_action_trap_is_routed() -> None:
    """strongSwan's sql plugin: child_configs.start_action 1 (trap) routes the CHILD_SA too."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from gateway.sqlconf.loader import load
    from tests.unit.gateway.sqldata import load_sql

    db = create_engine("sqlite://")
    load_sql(db, "net2net-psk.sql", {"PH_IP_MOON": "192.0.2.1", "PH_IP_SUN": "192.0.2.2"})
    load_sql(db, "UPDATE child_configs SET start_action = 1;", create=False)
    with Session(db) as s:
        (c,) = load(s).connections
    assert c.children[0].start_action == "trap"
    engine = Engine([c], Credentials())
    dp = UserspaceDataPlane(lambda d, a: None, clock=Clock(50.0))
    traps = TrapManager(engine, dp, lambda remote: "192.0.2.1")
    traps.sync(engine.configs)
    assert [(str(p.local.subnet), str(p.remote.subnet), p.action) for p in dp._policies] == \
        [("10.1.0.0/16", "10.2.0.0/16", PolicyAction.TRAP)]


def test_a_trap_holding_the_peers_own_address_is_refused_in_the_userspace_data_plane() -> None:
    """Its route into the TUN device would take the IKE messages to the peer along (dynamic selectors:
    the two addresses); the other routed connections still load."""
    _, dp, traps, _ = setup(CONF + "\nconn h2h\n    leftsubnet=\n    auto=route\n")
    assert "h2h" not in traps.routed() and "net" in traps.routed()
    with pytest.raises(LocalError, match=r"conn h2h: auto=route: the remote selector 192.0.2.2/32 holds the peer's"):
        traps.route("h2h")
    assert all(str(p.remote.subnet) != "192.0.2.2/32" for p in dp._policies)


def test_the_trap_is_installed_again_when_its_last_child_sa_goes() -> None:
    """XFRM keeps one kernel policy per selector: the CHILD_SA's replaced the trap and went with it."""
    engine, dp, traps, clock = setup()
    t = traps.traps[("net", "net")]
    sa = engine.initiate("net", "net", clock.t)
    sa.children[5] = ChildSa("net", 5, 1, sa.config.children[0], 0x1234)  # a rekeyed successor, still up
    for p in t.policies:
        dp.delete_policy(p)  # as the kernel lost it
    traps.on_event(ev.ChildSaDeleted("net", "net", 7, 0x1000, 0x2000, "rekeyed"))
    assert not any(p.reqid == t.reqid for p in dp._policies)  # XFRM: the successor's policy must stay
    del sa.children[5]
    traps.on_event(ev.ChildSaDeleted("net", "net", 5, 0x1234, 0x2000, "deleted"))
    assert sum(1 for p in dp._policies if p.reqid == t.reqid) == 2
