"""A real iked `Daemon` (core_ike/daemon/runtime.py) run in this process, inside a lab host's network
namespace, on the XFRM data plane of a kernel without ESP (tests/dataplane/noesp.py: the SA steps are
recorded, policies, virtual IPs and source routes are the kernel's).

A test waits on the daemon's own signals, never on a fixed sleep: its engine events (`Daemon.listeners`
see each one after the data plane acted on it: SAs, policies and routes are in place by then) and its
log lines (its start, with the control socket listening). Each wait has a deadline and ends early, with
the daemon's own error, if the daemon stops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from tests.dataplane.noesp import NoEspXfrm

E = TypeVar("E")
T = TypeVar("T")


class _Lines(logging.Handler):
    """The daemon's log lines (any thread) into `XfrmDaemon.lines`, each a wake-up for its waits."""

    def __init__(self, owner: XfrmDaemon) -> None:
        super().__init__(logging.DEBUG)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        self.owner._post(self.owner.lines, record.getMessage())


class XfrmDaemon:
    """iked from `toml` (its control socket path written as "@CTL@"); `run` starts it in a namespace,
    runs the test's scenario once iked has started and stops iked after it."""

    def __init__(self, toml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from core_ike.io import xfrm

        self.sock = str(tmp_path / "iked.ctl")
        conf = tmp_path / "iked.toml"
        conf.write_text(toml.replace("@CTL@", self.sock))
        self.made: list[NoEspXfrm] = []  # made by the daemon in the namespace (its XFRM and netlink sockets)
        monkeypatch.setattr(xfrm, "choose_backend", self._backend)
        self.daemon = Daemon(load(conf))
        self.daemon.shutdown_timeout = 2.0
        self.events: list[Any] = []  # the engine's events, as the daemon's other consumers see them
        self.lines: list[str] = []  # the daemon's log lines, info and above
        self.daemon.listeners.append(lambda e: self._post(self.events, e))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _backend(self, *args: object, **kw: object) -> NoEspXfrm:
        self.made.append(NoEspXfrm())
        return self.made[-1]

    @property
    def plane(self) -> NoEspXfrm:
        """The daemon's data plane (once it runs)."""
        assert self.made, "iked made no data plane"
        return self.made[0]

    def run(self, ns: str, scenario: Callable[[], Awaitable[None]]) -> None:
        """iked in namespace `ns` (its sockets, threads and netlink there), `scenario` once it started."""
        from pyroute2 import netns

        netns.pushns(ns)
        try:
            asyncio.run(self._main(scenario))
        finally:
            netns.popns()

    async def _main(self, scenario: Callable[[], Awaitable[None]]) -> None:
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
        self._changed = asyncio.Event()
        logger = logging.getLogger("core_ike")
        level, handler = logger.level, _Lines(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # the daemon's default log level (docs/configuration.md)
        logger.addHandler(handler)
        self._task = asyncio.create_task(self.daemon.run())
        self._task.add_done_callback(lambda _: self._wake())
        try:
            await self.line(f"{self.daemon.prog} started", "iked's start (its control socket listening)")
            await scenario()
        finally:
            self.daemon.stopped.set()
            await self._task
            logger.removeHandler(handler)
            logger.setLevel(level)

    def _post(self, into: list[Any], item: object) -> None:
        if threading.get_ident() == self._thread:
            into.append(item)
            self._wake()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._post, into, item)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def event(self, kind: type[E], what: str, pred: Callable[[E], bool] = lambda e: True,
                    timeout: float = 15.0) -> E:
        """The first engine event of `kind` for which `pred` holds, seen already or waited for."""
        return await self._first(lambda: next((e for e in self.events if isinstance(e, kind) and pred(e)), None),
                                 what, timeout)

    async def line(self, text: str, what: str, timeout: float = 15.0) -> str:
        """The first log line holding `text`, logged already or waited for."""
        return await self._first(lambda: next((s for s in self.lines if text in s), None), what, timeout)

    async def _first(self, find: Callable[[], T | None], what: str, timeout: float) -> T:
        assert self._changed is not None and self._task is not None
        try:
            async with asyncio.timeout(timeout):
                while (found := find()) is None:
                    if self._task.done():
                        raise AssertionError(f"iked stopped while waiting for {what}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None
        return found
