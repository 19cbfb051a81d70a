"""Log lines cost less without changing (core_ike/daemon/startup.py, logrecords.py): each target's
formatter gives logging.Formatter's text for the same record, LeanRecords hold what logging's records
hold, a line logged outside an event loop is in the file at once, and run_daemon's end writes every
line (docs/operations.md, "Logging"); the writes after a loop callback: test_log_batching.py."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core_ike.daemon import startup
from core_ike.daemon.logrecords import LeanRecord, cheap_records, lean_record
from core_ike.daemon.startup import (
    JournalFormatter,
    LineFormatter,
    TimedFormatter,
    log_handler,
    run_daemon,
)
from tests.unit.daemon.logtools import log_lines

LINE = "[%(name)s] %(message)s"
TIMED = f"%(asctime)s.%(msecs)03d {LINE}"


def _records() -> Iterator[logging.LogRecord]:
    """Records at second boundaries, with arguments, a traceback and a stack."""
    for created in (1700000000.0, 1700000000.999, 1700000001.0005, 1700000001.5, 1700003599.9999, 1.25):
        r = logging.LogRecord("core_ike.ike", logging.INFO, "(unknown file)", 0,
                              "generating %s request %d [ %s ]", ("IKE_AUTH", 1, "IDi AUTH SA"), None)
        r.created = created
        r.msecs = int((created - int(created)) * 1000) + 0.0
        yield r
    try:
        raise ValueError("boom")
    except ValueError:
        yield logging.LogRecord("core_ike.me", logging.ERROR, "(unknown file)", 0, "two\nlines %r", (b"\x85",),
                                sys.exc_info())
    yield logging.LogRecord("core_ike.io", logging.DEBUG, "(unknown file)", 0, "with stack", (), None,
                            sinfo="Stack (most recent call last):\n  File x")
    yield logging.LogRecord("x", logging.CRITICAL, "(unknown file)", 0, "%d%%", (5,), None)


def _copy(r: logging.LogRecord) -> logging.LogRecord:
    return logging.makeLogRecord(dict(r.__dict__))


def test_timed_formatter_gives_logging_formatters_text() -> None:
    ours, theirs = TimedFormatter(), logging.Formatter(TIMED, "%H:%M:%S")
    for r in _records():
        assert ours.format(_copy(r)) == theirs.format(_copy(r))
    r = next(_records())
    assert ours.formatTime(r, "%Y") == theirs.formatTime(r, "%Y")  # another format is not the cached one


def test_line_and_journal_formatters_give_the_same_text() -> None:
    base = logging.Formatter(LINE)
    for r in _records():
        assert LineFormatter().format(_copy(r)) == base.format(_copy(r))
        lv = r.levelno
        prio = 7 if lv <= 10 else 6 if lv <= 20 else 4 if lv <= 30 else 3 if lv <= 40 else 2
        want = "\n".join(f"<{prio}>{x}" for x in base.format(_copy(r)).splitlines())
        assert JournalFormatter().format(_copy(r)) == want


def test_a_batch_of_lines_is_each_records_format() -> None:
    """lines() (the handler's batch) gives format's text for each record and the terminator, and a
    message made already (when an argument could change before the write) in place of the record's."""
    for fmt in (TimedFormatter(), JournalFormatter()):
        records = list(_records())
        assert fmt.lines([(_copy(r), None) for r in records], "\n") == [fmt.format(_copy(r)) + "\n" for r in records]
        made = _copy(records[0])
        made.msg, made.args = "made at the call", ()
        assert fmt.lines([(_copy(records[0]), "made at the call")]) == [fmt.format(made)]


def test_each_target_uses_the_fast_formatters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    f = log_handler(f"file:{tmp_path}/a.log", "iked")
    s = log_handler("stderr", "iked")
    try:
        assert isinstance(f, startup.LoopBatchingFileHandler) and isinstance(f, logging.FileHandler)
        assert isinstance(s, startup.LoopBatchingHandler)
        assert isinstance(f.formatter, TimedFormatter)
        assert isinstance(s.formatter, TimedFormatter)
    finally:
        f.close()
        s.close()


def test_no_event_loop_writes_at_once(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    log.info("one")
    assert log_lines(path) == ["one"]


def _daemon_log() -> logging.Logger:
    log = logging.getLogger("core_ike.test_batching_daemon")
    log.setLevel(logging.NOTSET)
    log.propagate = True
    return log


def test_run_daemon_writes_every_line_before_it_returns(root_to_file: Path) -> None:
    log = _daemon_log()

    async def run() -> None:
        log.info("stopping")  # the last line of the loop's last turn

    assert run_daemon("iked", run, lambda: log.info("closed"), event_loop="asyncio") == 0
    assert log_lines(root_to_file) == ["stopping", "closed"]


def test_an_exception_that_ends_the_daemon_loses_no_line(root_to_file: Path) -> None:
    log = _daemon_log()

    async def run() -> None:
        log.info("before the failure")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        run_daemon("iked", run, lambda: None, event_loop="asyncio")
    assert log_lines(root_to_file) == ["before the failure"]


def test_a_start_up_failure_line_follows_the_logged_ones(root_to_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log = _daemon_log()

    async def run() -> None:
        log.info("binding")
        raise OSError(99, "Cannot assign requested address")

    assert run_daemon("iked", run, lambda: None, event_loop="asyncio") == startup.STARTUP_FAILED
    assert log_lines(root_to_file) == ["binding", "cannot start: Cannot assign requested address"]
    assert capsys.readouterr().err == "iked: Cannot assign requested address\n"


@pytest.fixture
def cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing", "_logRecordFactory"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    if hasattr(logging, "logAsyncioTasks"):
        monkeypatch.setattr(logging, "logAsyncioTasks", logging.logAsyncioTasks)
    cheap_records()


@pytest.mark.usefixtures("cheap")
@pytest.mark.parametrize("args", [
    ("core_ike.ike", logging.INFO, "(unknown file)", 0, "generating %s request %d", ("IKE_AUTH", 1), None),
    ("core_ike.me", logging.WARNING, "/x/y/glue.py", 12, "%(a)s", ({"a": 1},), None, "f", "Stack:\n  x"),
    ("iked", logging.ERROR, __file__, 0, "%s", ("cannot start",), (ValueError, ValueError("v"), None)),
    ("x", 5, "", 0, "", (), None),
])
def test_lean_records_hold_what_logging_records_hold(args: tuple[object, ...]) -> None:
    assert logging.getLogRecordFactory() is lean_record
    record = lean_record(*args)  # type: ignore[arg-type]
    assert type(record) is LeanRecord and isinstance(record, logging.LogRecord)
    ours, theirs = vars(record), vars(logging.LogRecord(*args))  # type: ignore[arg-type]
    for t in ("created", "msecs", "relativeCreated"):  # the clock moved between the two
        assert isinstance(ours.pop(t), float)
        theirs.pop(t)
    assert ours == theirs


@pytest.mark.usefixtures("cheap")
def test_a_logged_line_is_the_same_through_lean_records(
        logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    log.info("IKE_SA %s[%d] established between %s...%s", "home", 1, "192.0.2.1", "198.51.100.7")
    log.info("%(n)d %(s)s", {"n": 4, "s": "map"})
    assert log_lines(path) == ["IKE_SA home[1] established between 192.0.2.1...198.51.100.7", "4 map"]


@pytest.mark.usefixtures("cheap")
@pytest.mark.parametrize("now", [1765112345.0, 1765112345.0009999, 1765112345.001, 1765112345.5, 1765112345.9995,
                                 1765112345.999999, 0.25, 12.0625])
def test_lean_record_times_are_logging_records_times(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    monkeypatch.setattr(time, "time", lambda: now)  # the one clock both read
    args = ("core_ike.ike", logging.INFO, "(unknown file)", 0, "m %d", (1,), None)
    ours, theirs = lean_record(*args), logging.LogRecord(*args)  # type: ignore[arg-type]
    assert (ours.created, ours.msecs, ours.relativeCreated) == (theirs.created, theirs.msecs, theirs.relativeCreated)
    assert type(ours.msecs) is float
