"""Log lines a remote party can trigger at will (malformed packets, failed integrity checks) are
rate-limited, so a flood of bad packets cannot flood the log: at most `burst` lines per key and
period, then one line saying how many were left out. Time is an input (sans-IO, design principle 1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass


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
