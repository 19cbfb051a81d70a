"""A responder installs a CHILD_SA before the IKE_AUTH response that completes it leaves (RFC 7296 §1.2:
with that response the CHILD_SA exists at the initiator, which may send ESP on it at once; with the
kernel's data plane, ESP that reaches it before the SA exists is dropped). And the reply to an unrelated
datagram read in the same wake-up is not held back by that installation.

The responder is a real engine behind the real UDP transport on 127.0.0.1 (its NAT-T socket read by the
transport or by the userspace data plane's reader), its events through the daemon's data plane glue into
a data plane that records, at each installation, whether a reply is already queued on the initiators'
sockets (loopback delivers a datagram within sendto(2)). The initiators are sans-IO engines driven
through plain sockets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from core_ike.daemon.glue import DataPlaneGlue, engine_child_deleter
from core_ike.esp import USERSPACE
from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine, EngineConfig
from core_ike.ike.identity import Identity
from core_ike.io.dataplane import Direction, PolicyParams, SaParams, SaUsage
from core_ike.io.fastpath import OFFLOAD_STEPS, UdpEspIo
from core_ike.rng import SeededRng
from tests.unit.daemon.stubengine import client, started
from tests.unit.ike.ike_pair import WALL0

LO = "127.0.0.1"
PSK = "a-very-secret-shared-key"


def _queued(s: socket.socket) -> bool:
    try:
        s.recv(65535, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    return True


class RecordingDataPlane:
    """Records each installation with whether each of two initiators had a datagram waiting at that
    moment."""

    name = "recording"
    esp_transforms = USERSPACE

    def __init__(self, first: socket.socket, second: socket.socket) -> None:
        self.socks = (first, second)
        self.log: list[tuple[str, bool, bool]] = []

    def _record(self, what: str) -> None:
        self.log.append((what, *map(_queued, self.socks)))

    def allocate_spi(self, src: str, dst: str, reqid: int = 0) -> int:
        return 0x1000 + len(self.log)

    def install_sa(self, params: SaParams) -> None:
        self._record(f"sa {params.direction.name}")

    def install_policy(self, policy: PolicyParams) -> None:
        self._record(f"policy {policy.direction.name}")

    def update_sa(self, spi: int, direction: Direction, **kw: Any) -> None:
        return None

    def delete_sa(self, spi: int, direction: Direction) -> None:
        return None

    def delete_policy(self, policy: PolicyParams) -> None:
        return None

    def query_usage(self, spi: int, direction: Direction) -> SaUsage:
        return SaUsage(0, 0, 0.0)

    def next_event(self) -> None:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


def _engines(init_port: int, resp_port: int, natt: int, seed: str) -> tuple[Engine, Engine]:
    """Initiator and responder; IKE to a port other than 500 runs on both sides' NAT-T ports, with the
    non-ESP marker (RFC 7296 §2.23), so `init_port` and `resp_port` are NAT-T ports, `natt` the
    responder's port 500 stand-in."""
    ca, cb = Credentials(), Credentials()
    for c in (ca, cb):
        c.add_psk(PSK, "alice@test", "bob@test")
    ida, idb = Identity.parse("alice@test"), Identity.parse("bob@test")
    a = Engine([IkeConfig("home", local_addrs=[LO], remote_addrs=[LO], local_port=init_port, remote_port=resp_port,
                          local=AuthConfig("psk", ida), remote=AuthConfig("psk", idb),
                          children=[ChildConfig("net", local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"])])],
               ca, EngineConfig(ike_port=_free_port(), natt_port=init_port), rng=SeededRng(f"a{seed}"))
    b = Engine([IkeConfig("gw", local_addrs=[LO], remote_addrs=["%any"], local_port=resp_port, unique="no",
                          local=AuthConfig("psk", idb), remote=AuthConfig("psk", ida),
                          children=[ChildConfig("net", local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"])])],
               cb, EngineConfig(ike_port=natt, natt_port=resp_port), rng=SeededRng(f"b{seed}"))
    for eng in (a, b):
        eng.set_wall_clock(WALL0, time.monotonic())
    return a, b


def _send(a: Engine, c: socket.socket) -> None:
    for data, _, remote in a.datagrams_to_send():
        c.sendto(data, remote)


async def _answer(a: Engine, c: socket.socket) -> None:
    """Hand `a` the one answer arriving on `c`."""
    async with asyncio.timeout(10):
        data, remote = await asyncio.get_running_loop().sock_recvfrom(c, 65535)
    assert data[:4] == bytes(4)  # the non-ESP marker (RFC 3948 §2.2), which the engine gets without
    a.receive(data[4:], (LO, c.getsockname()[1]), remote, time.monotonic())


@pytest.mark.parametrize("reader", ["transport", *OFFLOAD_STEPS, "none"])
def test_the_child_sa_is_installed_before_the_ike_auth_response_leaves(reader: str) -> None:
    """Two initiators' IKE_AUTH requests read in one wake-up of the responder. `reader`: who reads the
    NAT-T socket: the transport itself, or the userspace data plane's reader (core_ike/io/fastpath.py
    UdpEspIo) with one of its offload steps, or none of them."""

    async def run() -> tuple[RecordingDataPlane, list[Any]]:
        with client() as c1, client() as c2:
            port, natt = _free_port(), _free_port()
            a1, b = _engines(c1.getsockname()[1], port, natt, "1")
            a2, _ = _engines(c2.getsockname()[1], port, natt, "2")
            dp = RecordingDataPlane(c1, c2)
            glue = DataPlaneGlue(dp, engine_child_deleter(b))
            b.extensions.append(glue)
            with started(b, [LO], [port, natt]) as t:  # type: ignore[arg-type]
                t.on_event = glue.handle
                if reader != "transport":
                    steps = frozenset() if reader == "none" else frozenset({reader})
                    UdpEspIo(t, port, steps, lambda esp: None).start(asyncio.get_running_loop())
                for a, c in ((a1, c1), (a2, c2)):  # IKE_SA_INIT
                    a.initiate("home", now=time.monotonic())
                    _send(a, c)
                    await _answer(a, c)
                _send(a1, c1)  # both IKE_AUTH requests queued before the responder's next wake-up
                _send(a2, c2)
                for a, c in ((a1, c1), (a2, c2)):
                    await _answer(a, c)
            events = [e for a in (a1, a2) for e in iter(a.next_event, None)]
            return dp, events

    dp, events = asyncio.run(run())
    assert [type(e) for e in events if isinstance(e, ev.ChildSaEstablished)] == [ev.ChildSaEstablished] * 2
    one = ["sa IN", "sa OUT", "policy OUT", "policy IN"]
    assert [what for what, _, _ in dp.log] == one + one
    # nothing waited on an initiator's socket while its CHILD_SA was installed: its IKE_AUTH response
    # left afterwards; the first one's response left before the second installation, not held up by it
    assert [(auth1, auth2) for _, auth1, auth2 in dp.log] == [(False, False)] * 4 + [(True, False)] * 4, dp.log
