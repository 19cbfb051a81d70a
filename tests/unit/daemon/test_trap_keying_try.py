"""A keying try after an attempt an acquire started (core_ike/daemon/traps.py, docs/operations.md): it asks
again for the trap's CHILD_SA with the triggering packet's selectors first (RFC 7296 2.9), not for every
CHILD_SA of the connection; and what `status` says about a trap while acquires wait."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from pathlib import Path
from typing import Any

from core_ike.constants import NON_ESP_MARKER
from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.daemon.traps import TrapManager
from core_ike.ike import events as ev
from core_ike.ike import ts as tsmod
from core_ike.ike.config import ChildConfig
from core_ike.ike.engine import Engine
from core_ike.io.dataplane import Acquire
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit import fakes
from tests.unit.fakes import Clock, Wire
from tests.unit.ike.ike_pair import A_IP, B_IP, make_pair


def acquire_for(dp: UserspaceDataPlane, clock: Clock, dst: str) -> Acquire:
    """A UDP packet 10.1.0.5:5000 -> dst:53 leaves through the data plane and meets a trap."""
    clock.t += 1.5  # past the data plane's one acquire per trap policy a second
    dp.check_timers(clock.t)
    dp._outbound(fakes.ipv4("10.1.0.5", dst, 17, 5000, 53, filler=8), clock.t)
    (e,) = list(iter(dp.next_event, None))
    assert isinstance(e, Acquire)
    return e


def responder_with_two_ranges(b: Engine) -> None:
    """b accepts 10.2.0.0/24 (first) or 10.3.0.0/24 towards 10.1.0.0/24, and nothing else."""
    b.config("gw").children = [
        ChildConfig("net2", local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"], esp_proposals="aes128gcm16"),
        ChildConfig("net3", local_ts=["10.3.0.0/24"], remote_ts=["10.1.0.0/24"], esp_proposals="aes128gcm16")]


def test_the_keying_try_asks_for_the_packets_child_sa_with_its_selectors() -> None:
    """a routes two CHILD_SA configs, `wide` (10.0.0.0/8) and `other` (10.9.0.0/24). A packet for
    10.3.0.9 meets `wide`'s trap while b is down; the keying try after that failure asks for `wide`
    alone, the packet first, so b narrows to its 10.3.0.0/24 config (without the packet it would
    take 10.2.0.0/24, and `other` it refuses)."""
    pair = make_pair()
    cfg = pair.a.config("home")
    cfg.children = [ChildConfig("wide", local_ts=["10.1.0.0/24"], remote_ts=["10.0.0.0/8"], esp_proposals="aes128gcm16",
                                start_action="trap"),
                    ChildConfig("other", local_ts=["10.1.0.0/24"], remote_ts=["10.9.0.0/24"],
                                esp_proposals="aes128gcm16", start_action="trap")]
    responder_with_two_ranges(pair.b)
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    retrying = {"home": False}
    traps = TrapManager(pair.a, dp, lambda remote: A_IP, lambda conn: retrying[conn])
    traps.sync(pair.a.configs)
    assert traps.routed() == {"home": ["wide", "other"]}

    def feed() -> None:
        pair.pump()
        for e in pair.events_a:
            traps.on_event(e)
        pair.events_a.clear()

    def states() -> dict[str, str]:
        return {r["child"]: r["state"] for r in traps.status(pair.now)}

    pair.drop = lambda side, data: True  # b is down
    assert traps.on_acquire(acquire_for(dp, clock, "10.3.0.9"), pair.now)
    (first,) = pair.a.ike_sas()
    feed()
    assert states() == {"wide": "acquire", "other": "connecting"}
    pair.advance(300)  # the retransmissions run out
    feed()
    assert not pair.a.ike_sas()
    retrying["home"] = True  # what the daemon's keyingtries does on the failure
    assert states() == {"wide": "keying-try", "other": "keying-try"}
    assert not traps.on_acquire(acquire_for(dp, clock, "10.3.0.9"), pair.now)  # waits for the try

    assert not traps.keying_try("home", first.unique_id + 1000, pair.now)  # not an IKE_SA of an acquire
    pair.drop = None  # b is up when the keying try comes
    retrying["home"] = False
    assert traps.keying_try("home", first.unique_id, pair.now)
    assert states()["wide"] == "acquire"
    feed()
    assert [(e.name, e.remote_ts) for e in pair.of("b", ev.ChildSaEstablished)] == [("net3", ("10.1.0.0/24",))]
    (up,) = [e for e in pair.events_b if isinstance(e, ev.ChildSaEstablished)]
    assert up.local_ts == ("10.3.0.0/24",)
    (sa,) = pair.a.ike_sas()
    assert [(c.name, [tsmod.to_text(t) for t in c.remote_ts]) for c in sa.children.values()] == [
        ("wide", ["10.3.0.0/24"])]
    assert not pair.of("b", ev.ChildSaFailed)  # `other` was not asked for
    assert states() == {"wide": "child-up", "other": "waiting"}
    assert not traps.keying_try("home", first.unique_id, pair.now)  # used up


def test_a_keying_try_of_an_up_brings_up_the_connection_as_configured() -> None:
    """An IKE_SA `up` (or a start) made and lost: not the trap manager's to try again."""
    pair = make_pair()
    pair.a.config("home").children[0].start_action = "trap"
    dp = UserspaceDataPlane(lambda d, a: None, clock=Clock())
    traps = TrapManager(pair.a, dp, lambda remote: A_IP)
    traps.sync(pair.a.configs)
    pair.drop = lambda side, data: True
    sa = pair.a.initiate("home", None, pair.now)
    pair.advance(300)
    for e in pair.events_a:
        traps.on_event(e)
    assert pair.of("a", ev.IkeSaFailed) and not traps.keying_try("home", sa.unique_id, pair.now)


def _acquired_attempt_lost() -> tuple[Any, TrapManager, UserspaceDataPlane, Clock]:
    """A pair whose initiator routes 'home' and sent the IKE_SA_INIT a packet to 10.2.0.9 started into a
    network that drops everything."""
    pair = make_pair()
    pair.a.config("home").children[0].start_action = "trap"
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    traps = TrapManager(pair.a, dp, lambda remote: A_IP)
    traps.sync(pair.a.configs)
    pair.drop = lambda side, data: True
    assert traps.on_acquire(acquire_for(dp, clock, "10.2.0.9"), pair.now)
    return pair, traps, dp, clock


def test_an_attempt_closed_while_being_set_up_holds_no_acquire_back() -> None:
    """`down` of an IKE_SA still being set up ends it without an event: the trap is free at once."""
    pair, traps, dp, clock = _acquired_attempt_lost()
    (sa,) = pair.a.ike_sas()
    assert [r["state"] for r in traps.status(pair.now)] == ["acquire"]
    pair.a.terminate(sa, pair.now)
    assert not pair.a.ike_sas()
    assert [(r["state"], r["acquire-pending"]) for r in traps.status(pair.now)] == [("waiting", None)]
    assert traps.on_acquire(acquire_for(dp, clock, "10.2.0.9"), pair.now)  # the next packet starts one


# -- the same through iked: its keyingtries, a responder engine behind the recording Wire ------------

TOML = """\
[daemon]
listen = ["{a}"]
control = "/nonexistent/iked.ctl"
dataplane = "none"
[connections.home]
local_addrs = ["{a}"]
remote_addrs = ["{b}"]
keyingtries = 3
proposals = "aes128gcm16-prfsha256-x25519"
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "bob@test" }}
retransmit = {{ timeout = "1s", tries = 1, early_timeout = "1s" }}
[connections.home.children.wide]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.0.0.0/8"]
esp_proposals = "aes128gcm16"
start_action = "trap"
[connections.home.children.other]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.9.0.0/24"]
esp_proposals = "aes128gcm16"
start_action = "trap"
[[secrets.ike]]
id = ["alice@test", "bob@test"]
secret = "a-very-secret-shared-key"
"""


class SignallingWire(Wire):
    """The recording Wire of one local port, which also says when something was sent."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.event = asyncio.Event()

    def sendto(self, data: bytes, remote: tuple[str, int]) -> int:
        self.event.set()
        return super().sendto(data, remote)


def _iked(tmp_path: Path) -> tuple[Daemon, UserspaceDataPlane, Clock]:
    """iked with TOML's connections (a trap on 'home', keyingtries) and a userspace data plane whose
    acquires the test makes."""
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(TOML.format(a=A_IP, b=B_IP)))
    daemon = Daemon(load(path))
    daemon.shutdown_timeout = 0.1
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    daemon.dp = dp
    return daemon, dp, clock


def test_iked_keying_try_after_a_trap_attempt_carries_the_packet(tmp_path: Path) -> None:
    """iked's own keyingtries (runtime.py): the first attempt, started by a packet for 10.3.0.9, gets
    no answer; the keying try 1 s later reaches a responder engine with two ranges, which narrows to
    the packet's (10.3.0.0/24), and only the trap's CHILD_SA is negotiated."""
    daemon, dp, clock = _iked(tmp_path)
    engine = daemon.engine
    responder = make_pair().b
    responder_with_two_ranges(responder)
    got: list[object] = []
    daemon.listeners.append(got.append)

    async def go() -> None:
        wires = {port: SignallingWire(port) for port in (500, 4500)}
        daemon.transport.sockets = {(A_IP, p): w for p, w in wires.items()}  # type: ignore[misc]
        daemon.autostart(time.monotonic())
        daemon.on_acquire(acquire_for(dp, clock, "10.3.0.9"), time.monotonic())
        assert len(engine.ike_sas()) == 1 and len(wires[500].sent) == 1
        async with asyncio.timeout(30):
            while engine.ike_sas():  # no answer: the retransmissions run out (on their due times)
                t = engine.get_timer()
                assert t is not None
                engine.handle_timer(t)
                daemon.transport.flush()
        assert "home" in daemon._retry_due
        wires[500].sent.clear()
        wires[500].event.clear()
        async with asyncio.timeout(30):
            await wires[500].event.wait()  # the keying try's IKE_SA_INIT
        # the responder is up now: carry datagrams both ways until both sides are quiet
        moved = True
        while moved:
            moved = False
            for w in wires.values():
                for data, remote in w.sent:
                    responder.receive(data[4:] if w.port == 4500 else data, remote, (A_IP, w.port), time.monotonic())
                    moved = True
                w.sent.clear()
            for data, local, remote in responder.datagrams_to_send():
                if remote[1] == 4500:
                    assert data.startswith(NON_ESP_MARKER)
                    data = data[4:]
                engine.receive(data, remote, local, time.monotonic())
                moved = True
            daemon.transport.flush()
        (up,) = [e for e in got if isinstance(e, ev.ChildSaEstablished)]
        assert (up.name, up.local_ts, up.remote_ts) == ("wide", ("10.1.0.0/24",), ("10.3.0.0/24",))
        assert not [e for e in got if isinstance(e, ev.ChildSaFailed)]  # `other` was not asked for
        assert daemon.traps is not None
        assert {r["child"]: r["state"] for r in daemon.traps.status(time.monotonic())} == {
            "wide": "child-up", "other": "waiting"}

    asyncio.run(go())
    asyncio.run(daemon.shutdown())



class _LineSeen(logging.Handler):
    """Sets an asyncio event when a log line starting with `prefix` is logged (at any level)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


def test_a_keying_try_for_a_connection_removed_meanwhile_does_nothing(tmp_path: Path) -> None:
    """The gateway's configuration database drops the connection while its keying try is scheduled
    (a refresh, unlike a reload, does not cancel the try): the try starts nothing and raises nothing."""
    daemon, dp, clock = _iked(tmp_path)
    engine = daemon.engine
    errors: list[dict[str, object]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        logged = _LineSeen("no keying try of 'home'")
        daemon_log.addHandler(logged)
        wire = Wire()
        daemon.transport.sockets = {(A_IP, 500): wire, (A_IP, 4500): wire}  # type: ignore[dict-item]
        daemon.autostart(time.monotonic())
        daemon.on_acquire(acquire_for(dp, clock, "10.3.0.9"), time.monotonic())
        async with asyncio.timeout(30):
            while engine.ike_sas():
                t = engine.get_timer()
                assert t is not None
                engine.handle_timer(t)
                daemon.transport.flush()
        assert "home" in daemon._retry_due
        engine.configs[:] = []  # what gateway/daemon.py apply_snapshot does with a removed row
        assert daemon.traps is not None
        daemon.traps.sync(engine.configs)
        sent = len(wire.sent)
        async with asyncio.timeout(30):
            await logged.wait()  # the try, due 1 s after the failure, says why it starts nothing
        assert "home" not in daemon._retry_due
        assert not engine.ike_sas() and len(wire.sent) == sent and daemon.traps.routed() == {}

    daemon_log = logging.getLogger("core_ike.daemon")  # runtime.py's; its info line is the event
    level = daemon_log.level
    daemon_log.setLevel(logging.INFO)
    try:
        asyncio.run(go())
    finally:
        daemon_log.setLevel(level)
        for h in [h for h in daemon_log.handlers if isinstance(h, _LineSeen)]:
            daemon_log.removeHandler(h)
    asyncio.run(daemon.shutdown())
    assert errors == []


def test_no_keying_try_for_a_child_sa_up_meanwhile() -> None:
    """The attempt a packet started failed; before its keying try is due, `up` brought the CHILD_SA up:
    the try starts nothing (no second IKE_SA for a CHILD_SA that is there)."""
    pair, traps, _, _ = _acquired_attempt_lost()
    (first,) = pair.a.ike_sas()
    pair.advance(300)
    for e in pair.events_a:
        traps.on_event(e)
    pair.drop = None
    up = pair.a.initiate("home", None, pair.now)
    pair.pump()
    assert up.established and [c.name for c in up.children.values()] == ["net"]
    assert traps.keying_try("home", first.unique_id, pair.now)
    pair.pump()
    assert pair.a.ike_sas() == [up]
