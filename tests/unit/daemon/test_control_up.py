"""EngineControl's `up` (core_ike/daemon/control.py): the reply is ready on the loop turn that follows the
CHILD_SA's event (no second future between them), says established only once the CHILD_SA is, and the
timeout still answers with what was missing."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

from core_ike.daemon.control import EngineControl
from core_ike.ike import events as ev
from core_ike.ike.engine import Engine

ADDR = ("192.0.2.1", 4500)


class _Engine:
    def __init__(self) -> None:
        self.started: list[str] = []

    def config(self, name: str) -> Any:
        return SimpleNamespace(name=name, children=[SimpleNamespace(name="net")])

    def initiate(self, name: str, child: str | None, now: float) -> None:
        self.started.append(name)


def _ike() -> ev.IkeSaEstablished:
    return ev.IkeSaEstablished("bob", 3, ADDR, ADDR, "alice", "bob", b"\1" * 8, b"\2" * 8, True)


def _child() -> ev.ChildSaEstablished:
    keys = ev.ChildKeys(20, 128, 0, False, 0x1234, 0x5678, b"k" * 20, b"", b"k" * 20, b"")
    return ev.ChildSaEstablished("bob", 3, "net", 2, 1, ADDR, ADDR, True, ("10.0.0.1/32",), ("10.0.0.2/32",),
                                 keys, "AES_GCM_16_128")


async def _after_one_turn(task: asyncio.Task[dict[str, Any]]) -> bool:
    """Is `task` done once the callbacks already scheduled have run (one turn of the loop)?"""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[bool] = loop.create_future()
    loop.call_soon(lambda: seen.set_result(task.done()))
    return await seen


def test_up_reply_ready_on_the_turn_after_the_child_sa_event() -> None:
    async def run() -> None:
        engine = _Engine()
        ctl = EngineControl(cast(Engine, engine), lambda: None)
        task = asyncio.ensure_future(ctl.handle({"cmd": "up", "conn": "bob", "timeout": 3600}))
        while not engine.started:  # the handler runs up to its wait
            await _after_one_turn(task)
        ctl.feed(_ike())
        assert not await _after_one_turn(task)  # the IKE_SA alone does not answer: its CHILD_SA is missing
        ctl.feed(_child())
        assert await _after_one_turn(task)
        reply = task.result()
        assert reply["ok"] and reply["ike"] == 3 and reply["child"] == "net" and reply["spi-in"] == "00001234"
        assert not ctl.waiters

    asyncio.run(run())


def test_up_timeout_names_what_is_missing() -> None:
    async def run() -> None:
        ctl = EngineControl(cast(Engine, _Engine()), lambda: None)
        task = asyncio.ensure_future(ctl.handle({"cmd": "up", "conn": "bob", "timeout": 0}))
        while not ctl.waiters and not task.done():
            await _after_one_turn(task)
        ctl.feed(_ike())
        reply = await asyncio.wait_for(task, 30)
        assert reply == {"ok": False, "conn": "bob",
                         "error": "'bob': its CHILD_SA(s) net not established after 0 s"}
        assert not ctl.waiters

    asyncio.run(run())


def test_control_socket_answers_each_request_on_one_connection(tmp_path: Any) -> None:
    """ikectl's Connection (core_ike/daemon/ctl.py) on a real ControlServer: a malformed line is answered
    with an error, and the connection serves the next request (as the bench's `up` after connecting)."""
    from core_ike.daemon.control import ControlServer
    from core_ike.daemon.ctl import Connection

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": req["cmd"]}

    async def run() -> None:
        path = str(tmp_path / "ctl.sock")
        server = ControlServer(path, handler)
        await server.start()
        try:
            def client() -> list[dict[str, Any]]:
                with Connection(path, 30) as c:
                    c.sock.sendall(b"not json\n")
                    buf = b""
                    while not buf.endswith(b"\n") and (chunk := c.sock.recv(65536)):
                        buf += chunk
                    return [json.loads(buf or b"null"), c.request({"cmd": "up"}), c.request({"cmd": "list"})]

            bad, up, listed = await asyncio.to_thread(client)
        finally:
            server.close()
        assert bad is not None and bad["ok"] is False and "error" in bad
        assert up == {"ok": True, "echo": "up"} and listed == {"ok": True, "echo": "list"}

    asyncio.run(run())
