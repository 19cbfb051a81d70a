"""The info lines every IKE_SA logs (received/parsed/generating/sending packet, authentication, established):
the record logging.Logger.info makes, given to the same handlers, with fewer frames.

Logger.info calls Logger._log, which calls Logger.makeRecord, which calls the record factory, and then
Logger.handle. When records carry no caller (logging._srcfile is None, as the logging HOWTO's
"Optimization" section sets it and core_ike/daemon/logrecords.py cheap_records does), _log passes the factory
"(unknown file)", line 0, "(unknown function)" and no stack: the record is made here the same way and
handed to Logger.handle (its filters and handlers as for Logger.info). Otherwise Logger.info itself is
called, naming the caller one frame up, so a record carries the same caller as before.
"""

from __future__ import annotations

import logging

INFO = logging.INFO
_FILE = "(unknown file)"
_FUNC = "(unknown function)"


def info(log: logging.Logger, msg: str, *args: object) -> None:
    """``log.info(msg, *args)``."""
    if log.isEnabledFor(INFO):
        if logging._srcfile is None:
            log.handle(logging.getLogRecordFactory()(log.name, INFO, _FILE, 0, msg, args, None, _FUNC, None))
        else:
            log.info(msg, *args, stacklevel=2)


def enabled_info(log: logging.Logger, msg: str, *args: object) -> None:
    """``log.info(msg, *args)`` for a caller that has found ``log.isEnabledFor(logging.INFO)`` true (it
    evaluates costly arguments only then)."""
    if logging._srcfile is None:
        log.handle(logging.getLogRecordFactory()(log.name, INFO, _FILE, 0, msg, args, None, _FUNC, None))
    else:
        log.info(msg, *args, stacklevel=2)
