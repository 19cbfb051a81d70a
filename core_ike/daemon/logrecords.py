"""The daemons' log records (an adapter's concern, not the sans-IO core's): no caller-frame, thread or
process lookups, and LeanRecord, which gives the same attributes with less work per line."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

_UNKNOWN_FILE = "(unknown file)"  # logging's pathname when it looks up no caller (logging._srcfile None)


class LeanRecord(logging.LogRecord):
    """A LogRecord with the attributes and values logging.LogRecord gives once cheap_records() has
    turned off the caller, thread and process lookups, made with less work: the attributes that are
    the same in every such record set by one dict update, no path splitting for the "(unknown file)"
    every record carries then, no checks of switches known to be off."""

    def __init__(self, name: str, level: int,  # noqa: PLR0913, PLR0917 - logging.LogRecord's signature
                 pathname: str, lineno: int, msg: object,
                 args: Any, exc_info: Any, func: str | None = None, sinfo: str | None = None,
                 **kwargs: object) -> None:
        ct = time.time()
        self.__dict__.update(_SAME)
        if args and len(args) == 1:
            a = args[0]
            if type(a) not in _PLAIN and isinstance(a, Mapping) and a:
                args = a  # logging.LogRecord: a single mapping is the arguments (log("%(a)s", {"a": 1}))
        self.name = name
        self.msg = msg
        self.args = args
        self.levelname = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
        self.levelno = level
        if pathname != _UNKNOWN_FILE:
            self.pathname = pathname
            try:
                self.filename = os.path.basename(pathname)
                self.module = os.path.splitext(self.filename)[0]
            except (TypeError, ValueError, AttributeError):
                self.filename = pathname
                self.module = "Unknown module"
        self.exc_info = exc_info
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func  # type: ignore[assignment]  # None as logging.LogRecord stores it
        self.created = ct
        self.msecs = int((ct - int(ct)) * 1000) + 0.0
        self.relativeCreated = (ct - _START) * 1000


_START: float = getattr(logging, "_startTime", time.time())
_TASK_NAME = hasattr(logging, "logAsyncioTasks")  # records carry taskName
_LEVEL_NAMES = logging._levelToName  # what logging.getLevelName looks up first (addLevelName changes it too)
_PLAIN = frozenset((str, int, float, bool, bytes, tuple, type(None)))  # argument types that are no mapping
# what every record without a caller, thread or process lookup holds the same (logging.LogRecord's
# values then), before LeanRecord sets what differs
_SAME: dict[str, object] = {
    "pathname": _UNKNOWN_FILE, "filename": _UNKNOWN_FILE, "module": _UNKNOWN_FILE, "exc_text": None,
    "thread": None, "threadName": None, "processName": None, "process": None,
    **({"taskName": None} if _TASK_NAME else {})}


def _lean_matches() -> bool:
    """LeanRecord has exactly logging.LogRecord's attributes (a later Python may add some)."""
    args = ("x", logging.INFO, _UNKNOWN_FILE, 0, "m %s", ("a",), None)
    return set(vars(LeanRecord(*args))) == set(vars(logging.LogRecord(*args)))


def cheap_records() -> None:
    """LogRecords without the caller's frame, process id, thread, process or task name: no format of
    ours shows them, and on the setup path each costs a frame walk or a system call per line (the
    logging HOWTO's "Optimization" section). The records are LeanRecords when those have the same
    attributes as logging's own."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if _TASK_NAME:
        setattr(logging, "logAsyncioTasks", False)  # noqa: B010 - Python 3.12+ only
    if _lean_matches():
        logging.setLogRecordFactory(LeanRecord)
