"""The daemons' log records (an adapter's concern, not the sans-IO core's): no caller-frame, thread or
process lookups, and lean_record, which gives the same attributes with less work per line."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

_UNKNOWN_FILE = "(unknown file)"  # logging's pathname when it looks up no caller (logging._srcfile None)


class LeanRecord(logging.LogRecord):
    """The records `lean_record` makes (logging.LogRecord's methods; made directly, logging.LogRecord's
    __init__ fills it)."""


def lean_record(name: str, level: int,  # noqa: PLR0913, PLR0917 - the record factory's signature (logging docs)
                pathname: str, lineno: int, msg: object,
                args: Any, exc_info: Any, func: str | None = None, sinfo: str | None = None,
                **kwargs: object) -> LeanRecord:
    """The record factory of cheap_records(): a LeanRecord with the attributes and values logging.LogRecord
    gives once cheap_records() has turned off the caller, thread and process lookups, made with less work:
    no path splitting for the "(unknown file)" every record carries then, no checks of switches known to be
    off, and every attribute set by its own assignment, always in the same order. CPython keeps such an
    object's attributes in the values array its class shares the keys of (no dictionary of its own until one
    is asked for): half the cost of a record made by updating its __dict__ with the common values. A
    function, not the class: calling a class runs type_call and slot_tp_init's generic call before __init__
    (about 600 instructions a record, callgrind)."""
    r = _new(LeanRecord)
    ct = time.time()
    if args and len(args) == 1:
        a = args[0]
        if type(a) not in _PLAIN and isinstance(a, Mapping) and a:
            args = a  # logging.LogRecord: a single mapping is the arguments (log("%(a)s", {"a": 1}))
    r.name = name
    r.msg = msg
    r.args = args
    r.levelname = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
    r.levelno = level
    r.pathname = r.filename = r.module = _UNKNOWN_FILE
    if pathname != _UNKNOWN_FILE:
        r.pathname = pathname
        try:
            r.filename = os.path.basename(pathname)
            r.module = os.path.splitext(r.filename)[0]
        except (TypeError, ValueError, AttributeError):
            r.filename = pathname
            r.module = "Unknown module"
    r.exc_info = exc_info
    r.exc_text = None
    r.stack_info = sinfo
    r.lineno = lineno
    r.funcName = func  # type: ignore[assignment]  # None as logging.LogRecord stores it
    r.created = ct
    r.msecs = ct % 1.0 * 1000 // 1  # logging's int((ct - int(ct)) * 1000) + 0.0 (both exact) without int calls
    r.relativeCreated = (ct - _START) * 1000
    r.thread = r.threadName = r.processName = r.process = None
    if _TASK_NAME:
        r.taskName = None
    return r


_new = object.__new__
_START: float = getattr(logging, "_startTime", time.time())
_TASK_NAME = hasattr(logging, "logAsyncioTasks")  # records carry taskName
_LEVEL_NAMES = logging._levelToName  # what logging.getLevelName looks up first (addLevelName changes it too)
_PLAIN = frozenset((str, int, float, bool, bytes, tuple, type(None)))  # argument types that are no mapping


def _lean_matches() -> bool:
    """lean_record gives exactly logging.LogRecord's attributes (a later Python may add some)."""
    args = ("x", logging.INFO, _UNKNOWN_FILE, 0, "m %s", ("a",), None)
    return set(vars(lean_record(*args))) == set(vars(logging.LogRecord(*args)))


def cheap_records() -> None:
    """LogRecords without the caller's frame, process id, thread, process or task name: no format of
    ours shows them, and on the setup path each costs a frame walk or a system call per line (the
    logging HOWTO's "Optimization" section). The records are lean_record's when those have the same
    attributes as logging's own."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if _TASK_NAME:
        setattr(logging, "logAsyncioTasks", False)  # noqa: B010 - Python 3.12+ only
    if _lean_matches():
        logging.setLogRecordFactory(lean_record)
