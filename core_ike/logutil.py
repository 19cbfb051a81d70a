"""Log lines a remote party can trigger at will (malformed packets, failed integrity checks) are
rate-limited, so a flood of bad packets cannot flood the log: at most `burst` lines per key and
period, then one line saying how many were left out. Time is an input (sans-IO, design principle 1).
The daemons' handlers write a loop turn's lines at once, after the turn's datagrams (TurnBatched*)."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class _Window:
    start: float
    shown: int = 0
    suppressed: int = 0


class LogLimiter:
    def __init__(self, logger: logging.Logger, burst: int = 10, period: float = 1.0, max_keys: int = 1024) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self.max_keys = max_keys  # keys are few (kinds of drops); a cap keeps an attacker from growing them
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, key: str, now: float, msg: str, *args: object) -> None:
        w = self._windows.get(key)
        if w is None or now - w.start >= self.period:
            if w is not None and w.suppressed:
                self.logger.log(level, "%d more %s message(s) suppressed in %.0f s", w.suppressed, key,
                                now - w.start)
            if w is None and len(self._windows) >= self.max_keys:
                self._windows.clear()
            w = self._windows[key] = _Window(now)
        if w.shown < self.burst:
            w.shown += 1
            self.logger.log(level, msg, *args)
        else:
            w.suppressed += 1

    def warning(self, key: str, now: float, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, now, msg, *args)


def cheap_records() -> None:
    """LogRecords without the caller's frame, process id, thread or process name: no format of ours
    shows them, and on the setup path each costs a frame walk or a system call per line (the logging
    HOWTO's "Optimization" section)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class _TurnBatched(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines are formatted when logged and written together at the end of the event-loop turn that
    logged them: one write instead of one per line, after the turn's datagrams have left. Without a
    running loop in the logging thread (start-up, shutdown, worker threads) every line is written at
    once, after any lines still waiting, so the order holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001 - a bad log call must not stop the daemon (logging's own rule)
            self.handleError(record)
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_out()
            return
        self._scheduled = True
        loop.call_soon(self._turn_end)

    def _turn_end(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            self._write_out()

    def _write_out(self) -> None:
        if not self._lines or self.stream is None:
            return
        data = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError) as e:  # the log's disk is full or its stream closed: nowhere to say it
            if sys.stderr is not None and sys.stderr is not self.stream:
                print(f"log write failed: {e}", file=sys.stderr)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()
            super().flush()


class TurnBatchedStreamHandler(_TurnBatched):
    """A StreamHandler (stderr, stdout) that writes once per event-loop turn."""


class TurnBatchedFileHandler(_TurnBatched, logging.FileHandler):
    """A FileHandler (file:PATH) that writes once per event-loop turn."""
