"""The daemons' log records skip what no format of theirs shows (core_ike/daemon/logrecords.py cheap_records)."""

from __future__ import annotations

import io
import logging

import pytest

from core_ike.daemon.logrecords import cheap_records
from core_ike.daemon.startup import log_handler


def test_cheap_records_keep_the_daemon_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing", "_logRecordFactory"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    cheap_records()
    h = log_handler("stdout", "iked")
    stream = io.StringIO()
    assert isinstance(h, logging.StreamHandler)
    h.setStream(stream)
    log = logging.getLogger("core_ike.ike")
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate, log.level = [h], False, logging.INFO
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("generating %s request %d", "ME_CONNECT", 4)
    finally:
        log.handlers[:], log.propagate, log.level = saved
    record = log.makeRecord("core_ike.ike", logging.INFO, "(unknown file)", 0, "x", (), None)
    assert record.process is None and record.thread is None  # no getpid() or thread lookup per line
    text = stream.getvalue()
    assert " [core_ike.ike] generating ME_CONNECT request 4\n" in text
    assert "ValueError: boom" in text  # tracebacks still there
