"""The daemons' log records (an adapter's concern, not the sans-IO core's): no caller-frame, thread or
process lookups; LeanRecord, which gives the same attributes with less work per line; and LeanLogger, which
takes a record from the call to the handlers in fewer Python calls."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

_UNKNOWN_FILE = "(unknown file)"  # logging's pathname when it looks up no caller (logging._srcfile None)


class LeanRecord(logging.LogRecord):
    """A LogRecord with the attributes and values logging.LogRecord gives once cheap_records() has
    turned off the caller, thread and process lookups, made with less work: no path splitting for the
    "(unknown file)" every record carries then, no checks of switches known to be off, and every
    attribute set by its own assignment, always in the same order. CPython keeps such an object's
    attributes in the values array its class shares the keys of (no dictionary of its own until one
    is asked for): half the cost of a record made by updating its __dict__ with the common values."""

    def __init__(self, name: str, level: int,  # noqa: PLR0913, PLR0917 - logging.LogRecord's signature
                 pathname: str, lineno: int, msg: object,
                 args: Any, exc_info: Any, func: str | None = None, sinfo: str | None = None,
                 **kwargs: object) -> None:
        ct = time.time()
        if args and len(args) == 1:
            a = args[0]
            if type(a) not in _PLAIN and isinstance(a, Mapping) and a:
                args = a  # logging.LogRecord: a single mapping is the arguments (log("%(a)s", {"a": 1}))
        self.name = name
        self.msg = msg
        self.args = args
        self.levelname = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
        self.levelno = level
        self.pathname = self.filename = self.module = _UNKNOWN_FILE
        if pathname != _UNKNOWN_FILE:
            self.pathname = pathname
            try:
                self.filename = os.path.basename(pathname)
                self.module = os.path.splitext(self.filename)[0]
            except (TypeError, ValueError, AttributeError):
                self.filename = pathname
                self.module = "Unknown module"
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func  # type: ignore[assignment]  # None as logging.LogRecord stores it
        self.created = ct
        self.msecs = int((ct - int(ct)) * 1000) + 0.0
        self.relativeCreated = (ct - _START) * 1000
        self.thread = self.threadName = self.processName = self.process = None
        if _TASK_NAME:
            self.taskName = None


_START: float = getattr(logging, "_startTime", time.time())
_TASK_NAME = hasattr(logging, "logAsyncioTasks")  # records carry taskName
_LEVEL_NAMES = logging._levelToName  # what logging.getLevelName looks up first (addLevelName changes it too)
_PLAIN = frozenset((str, int, float, bool, bytes, tuple, type(None)))  # argument types that are no mapping


class LeanLogger(logging.Logger):
    """logging.Logger, with what Logger.info, _log, makeRecord and handle do for a record without a caller
    lookup (logging._srcfile None), an exception, a stack or extra attributes done in one call: the
    record from the record factory, the logger's filters only when it has some, then callHandlers.
    Anything else goes through logging.Logger's own path, one stack level up so that a caller lookup
    finds the caller rather than this class's frame (findCaller counts the frames outside logging's
    module since Python 3.11.5)."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(_INFO):
            if kwargs or logging._srcfile is not None:
                kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller's, not this frame
                super()._log(_INFO, msg, args, **kwargs)
                return
            record = _LOGGING["_logRecordFactory"](self.name, _INFO, _UNKNOWN_FILE, 0, msg, args, None,
                                                   _UNKNOWN_FUNC, None)
            if self.filters or self.disabled:  # _pass, without a call per line
                self.handle(record)
            else:
                self.callHandlers(record)

    def _log(self, level: int, msg: object, args: Any, exc_info: Any = None,
             extra: Mapping[str, object] | None = None, stack_info: bool = False, stacklevel: int = 1) -> None:
        if exc_info or extra is not None or stack_info or logging._srcfile is not None:
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel + 1)  # the caller's frame
            return
        self._pass(_LOGGING["_logRecordFactory"](self.name, level, _UNKNOWN_FILE, 0, msg, args, None,
                                             _UNKNOWN_FUNC, None))

    def _pass(self, record: logging.LogRecord) -> None:
        if self.filters or self.disabled:
            self.handle(record)
        else:
            self.callHandlers(record)


_INFO = logging.INFO
_LOGGING: dict[str, Any] = vars(logging)  # its record factory, read per record as logging.makeRecord does
_UNKNOWN_FUNC = "(unknown function)"  # logging.Logger._log's funcName without a caller lookup


def lean_loggers() -> None:
    """Every logger that is a plain logging.Logger (the daemons' loggers are made at import, before the log
    is set up) becomes a LeanLogger, and so does every logger made later while logging makes plain ones."""
    for lg in logging.Logger.manager.loggerDict.values():
        if type(lg) is logging.Logger:
            lg.__class__ = LeanLogger
    if logging.getLoggerClass() is logging.Logger:
        logging.setLoggerClass(LeanLogger)


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
    lean_loggers()
