"""The event loop the daemons run on (docs/operations.md, "Event loop"): uvloop by default when it is
installed, asyncio's own with `event_loop = "asyncio"` or $IKEME_EVENT_LOOP; on either, iked answers
its control socket, reloads on SIGHUP and stops on SIGTERM with exit status 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
import uvloop  # a dependency of the package (pyproject.toml)

from core_ike.daemon.ctl import call
from core_ike.daemon.startup import EVENT_LOOP_ENV, loop_factory
from core_ike.errors import LocalError
from tests.unit.daemon.ikedproc import iked

ROOT = Path(__file__).resolve().parents[3]


def test_auto_and_uvloop_choose_uvloop_asyncio_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_the_environment_overrides_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert loop_factory("uvloop") is None
    monkeypatch.setenv(EVENT_LOOP_ENV, "UVLOOP")
    assert loop_factory("asyncio") is uvloop.new_event_loop
    monkeypatch.setenv(EVENT_LOOP_ENV, "libuv")
    with pytest.raises(LocalError, match=r"\$IKEME_EVENT_LOOP: 'libuv' is not auto, uvloop or asyncio"):
        loop_factory("auto")


def test_uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") is None
    with pytest.raises(LocalError, match=r'event_loop = "uvloop" but the uvloop package is not installed'):
        loop_factory("uvloop")


def test_uvloop_runs_the_daemons_loop_calls() -> None:
    """What the daemon asks of its loop: readers on raw descriptors, timers, signal handlers."""
    loop = uvloop.new_event_loop()
    try:
        a, b = socket.socketpair()
        got: list[bytes] = []
        done = asyncio.Event()

        async def main() -> None:
            lp = asyncio.get_running_loop()
            lp.add_reader(a.fileno(), lambda: (got.append(a.recv(10)), done.set()))
            lp.call_later(0.001, b.send, b"x")
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
            lp.remove_signal_handler(signal.SIGUSR1)
            await asyncio.wait_for(done.wait(), 10)
            lp.remove_reader(a.fileno())

        loop.run_until_complete(main())
        assert got == [b"x"]
    finally:
        loop.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("choice", ["default", "asyncio"])
def test_iked_on_each_loop(tmp_path: Path, choice: str) -> None:
    conf = tmp_path / "iked.toml"
    conf.write_text(f"""[daemon]
listen = ["127.0.0.1"]
port = {_free_port()}
natt_port = {_free_port()}
control = "{tmp_path}/ctl.sock"
dataplane = "none"
log_level = "debug"

[[secrets.ike]]
id = ["alice@lab", "bob@lab"]
secret = "event-loop-test-secret"

[connections.home]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "psk", id = "alice@lab" }}
remote = {{ auth = "psk", id = "bob@lab" }}
""")
    with iked(conf, {EVENT_LOOP_ENV: "asyncio"} if choice == "asyncio" else {}) as run:
        assert call(str(tmp_path / "ctl.sock"), {"cmd": "stats"})["ok"]
        run.proc.send_signal(signal.SIGHUP)
        run.wait_notification("RELOADING=1")
        run.wait_notification("READY=1")
        assert "reloaded configuration" in run.log.read_text()
    assert run.proc.returncode == 0, run.log.read_text()
    want = "uvloop" if choice == "default" else "asyncio"
    assert f"[core_ike.daemon] event loop: {want}" in run.log.read_text()
