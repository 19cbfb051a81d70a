"""Trap policies beyond the gateway (core_ike/daemon/traps.py): the acquire's packet offered as the first
traffic selectors and a responder that narrows to it (RFC 7296 2.9), `start_action = "trap"` in iked's
TOML file, and one attempt per trap at a time while a keying try is scheduled (docs/gateway.md, "Trap
policies")."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.daemon.traps import TrapManager, packet_selectors
from core_ike.errors import LocalError
from core_ike.ike import events as ev
from core_ike.ike import ts as tsmod
from core_ike.ike.config import ChildConfig
from core_ike.ike.tasks.child_create import with_packet
from core_ike.io.dataplane import Acquire
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit import fakes
from tests.unit.fakes import Clock, Wire
from tests.unit.ike.ike_pair import make_pair


def ipv4(src: str, dst: str, proto: int = 17, sport: int = 5000, dport: int = 53) -> bytes:
    return fakes.ipv4(src, dst, proto, sport, dport, filler=8)


def acquires(dp: UserspaceDataPlane) -> list[Acquire]:
    out = []
    while (e := dp.next_event()) is not None:
        assert isinstance(e, Acquire)
        out.append(e)
    return out


# -- the packet's selectors ---------------------------------------------------------------------------


def test_packet_selectors_hold_the_addresses_protocol_and_ports() -> None:
    src, dst = packet_selectors(Acquire(1, "10.1.0.5", "10.3.0.9", 17, sport=5000, dport=53)) or (None, None)
    assert src is not None and dst is not None
    assert (tsmod.to_text(src), src.start_port, src.end_port) == ("10.1.0.5/32[udp/5000]", 5000, 5000)
    assert (tsmod.to_text(dst), dst.start_port, dst.end_port) == ("10.3.0.9/32[udp/53]", 53, 53)
    # ICMP: the protocol, any "port" (RFC 4301 4.4.1.3 puts type and code there, not the packet's ports)
    icmp = packet_selectors(Acquire(1, "2001:db8::1", "2001:db8:3::9", 58, sport=128, dport=0))
    assert icmp is not None and [(tsmod.to_text(t), t.start_port, t.end_port) for t in icmp] == [
        ("2001:db8::1/128[58]", 0, 65535), ("2001:db8:3::9/128[58]", 0, 65535)]
    assert packet_selectors(Acquire(1, "10.1.0.5", "2001:db8::9", 17)) is None  # two families
    assert packet_selectors(Acquire(1, "", "", 0)) is None  # the data plane did not say


def test_the_packet_goes_first_only_inside_what_is_offered() -> None:
    pkt = (tsmod.from_cidr("10.1.0.5", 6, (40000, 40000)), tsmod.from_cidr("10.3.0.9", 6, (443, 443)))
    tsi, tsr = [tsmod.from_cidr("10.1.0.0/24")], [tsmod.from_cidr("10.0.0.0/8")]
    assert with_packet(pkt, tsi, tsr) == ([pkt[0], *tsi], [pkt[1], *tsr])
    only_udp = [tsmod.from_cidr("10.0.0.0/8", 17)]
    assert with_packet(pkt, tsi, only_udp) == (tsi, only_udp)  # a TCP packet is not ours to ask for there
    elsewhere = [tsmod.from_cidr("10.1.1.0/24")]
    assert with_packet(pkt, elsewhere, tsr) == (elsewhere, tsr)


def _two_ranges_pair() -> Any:
    """a: 10.1.0.0/24 === 10.0.0.0/8, routed; b: two CHILD_SA configs, 10.2.0.0/24 first, then 10.3.0.0/24."""
    pair = make_pair()
    child_a = pair.a.config("home").children[0]
    child_a.remote_ts = ["10.0.0.0/8"]
    child_a.start_action = "trap"
    b_cfg = pair.b.config("gw")
    b_cfg.children = [ChildConfig("net2", local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"], esp_proposals="aes128gcm16"),
                      ChildConfig("net3", local_ts=["10.3.0.0/24"], remote_ts=["10.1.0.0/24"], esp_proposals="aes128gcm16")]
    return pair


def test_a_responder_narrows_to_the_range_holding_the_triggering_packet() -> None:
    """RFC 7296 2.9: b accepts either range; the packet for 10.3.0.9 makes it pick 10.3.0.0/24."""
    pair = _two_ranges_pair()
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    traps = TrapManager(pair.a, dp, lambda remote: "192.0.2.1")
    traps.sync(pair.a.configs)
    dp._outbound(ipv4("10.1.0.5", "10.3.0.9"), clock.t)
    (acq,) = acquires(dp)
    assert (acq.src, acq.dst, acq.protocol, acq.sport, acq.dport) == ("10.1.0.5", "10.3.0.9", 17, 5000, 53)
    assert traps.on_acquire(acq, pair.now)
    pair.pump()
    (a_child,) = pair.of("a", ev.ChildSaEstablished)
    (b_child,) = pair.of("b", ev.ChildSaEstablished)
    assert b_child.name == "net3"
    assert (a_child.local_ts, a_child.remote_ts) == (("10.1.0.0/24",), ("10.3.0.0/24",))
    traps.on_event(a_child)
    assert traps.traps[("home", "net")].pending is None


def test_without_the_packet_the_responder_takes_its_first_range() -> None:
    """The same pair started by `up` (no packet): b's first config, 10.2.0.0/24, as before."""
    pair = _two_ranges_pair()
    pair.a.initiate("home", "net", pair.now)
    pair.pump()
    (b_child,) = pair.of("b", ev.ChildSaEstablished)
    (a_child,) = pair.of("a", ev.ChildSaEstablished)
    assert b_child.name == "net2" and a_child.remote_ts == ("10.2.0.0/24",)


def test_narrowing_drops_selectors_another_one_holds() -> None:
    host = tsmod.from_cidr("10.1.0.5", 17, (5000, 5000))
    net = tsmod.from_cidr("10.1.0.0/24")
    assert tsmod.narrow([host, net], [tsmod.from_cidr("10.1.0.0/16")]) == [net]
    assert tsmod.narrow([host, net], [tsmod.from_cidr("10.1.0.5")]) == [tsmod.from_cidr("10.1.0.5")]
    assert tsmod.narrow([host], [tsmod.from_cidr("10.1.0.0/16")]) == [host]


# -- iked's TOML file ---------------------------------------------------------------------------------

TOML = """\
[daemon]
listen = ["192.0.2.1"]
control = "/nonexistent/iked.ctl"
dataplane = "none"
[connections.home]
local_addrs = ["192.0.2.1"]
remote_addrs = [{remote}]
keyingtries = 3
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "bob@test" }}
retransmit = {{ timeout = "1s", tries = 1, early_timeout = "1s" }}
[connections.home.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
start_action = "trap"
[[secrets.ike]]
id = ["alice@test", "bob@test"]
secret = "a-very-secret-shared-key"
"""


def write(tmp_path: Path, remote: str = '"192.0.2.2"') -> Path:
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(TOML.format(remote=remote)))
    return path


def test_iked_toml_accepts_start_action_trap(tmp_path: Path) -> None:
    (conn,) = load(write(tmp_path)).connections
    assert conn.children[0].start_action == "trap"


@pytest.mark.parametrize("remote", ['"%any"', '"192.0.2.0/24"'])
def test_a_trap_needs_the_peers_address(tmp_path: Path, remote: str) -> None:
    with pytest.raises(LocalError) as info:
        load(write(tmp_path, remote))
    assert str(info.value) == ('[connections.home] start_action = "trap" needs remote_addrs to name the peer\'s '
                               f"address (not {remote}), and no mediation")


def test_iked_routes_and_keeps_one_attempt_while_a_keying_try_is_scheduled(tmp_path: Path) -> None:
    """The first attempt, started by a packet, gets no answer; until the keying try (1 s later) starts
    the next one, acquires start nothing, and during that try neither."""
    daemon = Daemon(load(write(tmp_path)))
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    wire = Wire()
    daemon.dp = dp
    daemon.transport.sockets = {("192.0.2.1", 500): wire, ("192.0.2.1", 4500): wire}  # type: ignore[dict-item]
    engine = daemon.engine

    def packet() -> None:
        clock.t += 1.5  # past the data plane's one acquire per trap a second
        dp.check_timers(clock.t)
        dp._outbound(ipv4("10.1.0.5", "10.2.0.9"), clock.t)
        for e in acquires(dp):
            daemon.on_acquire(e, time.monotonic())

    async def go() -> None:
        daemon.autostart(time.monotonic())
        assert daemon.traps is not None and daemon.traps.routed() == {"home": ["net"]}
        assert not engine.ike_sas()  # routed, nothing negotiated
        packet()
        (first,) = engine.ike_sas()
        assert len(wire.sent) == 1 and wire.sent[0][1] == ("192.0.2.2", 500)
        deadline = time.monotonic() + 30
        while engine.ike_sas():  # no answer: the retransmissions run out (fake time)
            assert time.monotonic() < deadline
            t = engine.get_timer()
            assert t is not None
            engine.handle_timer(t)
            daemon.transport.flush()
        assert daemon.events["ike-failed"] == 1 and "home" in daemon._retry_due
        packet()
        assert not engine.ike_sas()  # the keying try is scheduled: the acquire starts nothing
        ignored = daemon.traps.ignored
        started = asyncio.Event()
        initiate = engine.initiate

        def initiated(*a: Any, **kw: Any) -> Any:
            started.set()
            return initiate(*a, **kw)

        engine.initiate = initiated  # type: ignore[method-assign]
        async with asyncio.timeout(30):
            await started.wait()  # the keying try (1 s later) starts the next attempt
        (second,) = engine.ike_sas()
        assert second is not first and not second.established and "home" not in daemon._retry_due
        packet()
        assert engine.ike_sas() == [second]  # under way: still one attempt
        assert daemon.traps.ignored == ignored + 1 and daemon.traps.acquires == 1

    daemon.shutdown_timeout = 0.1  # no peer answers the DELETE
    asyncio.run(go())
    asyncio.run(daemon.shutdown())
    assert dp._policies == []  # the traps go with the daemon


def test_iked_reload_routes_and_unroutes(tmp_path: Path) -> None:
    """A reload that turns start_action = "trap" off removes the trap policies, one that turns it on
    installs them again; the daemon's stop removes them."""
    path = write(tmp_path)
    daemon = Daemon(load(path))
    daemon.config_path = str(path)
    dp = UserspaceDataPlane(lambda d, a: None, clock=Clock())
    daemon.dp = dp
    daemon.shutdown_timeout = 0.1

    async def go() -> None:
        daemon.autostart(time.monotonic())
        assert daemon.traps is not None and daemon.traps.routed() == {"home": ["net"]}
        assert {str(p.remote.subnet) for p in dp._policies} == {"10.2.0.0/24"}
        path.write_text(path.read_text().replace('start_action = "trap"', 'start_action = "none"'))
        assert daemon.reload()["changed"] == ["home"]
        assert daemon.traps.routed() == {} and dp._policies == []
        path.write_text(path.read_text().replace('start_action = "none"', 'start_action = "trap"')
                        .replace('"10.2.0.0/24"', '"10.2.0.0/16"'))
        assert daemon.reload()["changed"] == ["home"]
        assert not daemon.engine.ike_sas()  # routed again, nothing negotiated
        assert {str(p.remote.subnet) for p in dp._policies} == {"10.2.0.0/16"}
        await daemon.shutdown()
        assert dp._policies == []

    asyncio.run(go())
