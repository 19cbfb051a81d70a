"""The daemons' file and stream handler's short path (core_ike/daemon/startup.py, LoopBatchingHandler):
its lines are TimedFormatter.format's text for the same records, a filter on the handler still decides,
a record whose arguments are objects is written with their text at the time of the call and reaches
other handlers unchanged, and a TimedFormatter.format replaced on the class (as a benchmark that wants
microseconds does) is the one that writes."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from core_ike.daemon import startup
from core_ike.daemon.startup import TimedFormatter
from tests.unit.daemon.logtools import LOOPS, log_lines, next_turn, run_in_loop


class _Text:
    """An argument whose text changes after the call."""

    def __init__(self) -> None:
        self.text = "before"

    def __str__(self) -> str:
        return self.text


@pytest.mark.parametrize("kind", LOOPS)
def test_lines_are_timed_formatters_text(kind: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    log.addHandler(keep)
    try:
        async def turn() -> None:
            log.info("IKE_SA %s established between %s[%s]...%s[%s]", "home[1]", "192.0.2.1", "a", "192.0.2.7", "b")
            log.info("%(n)d %(s)s", {"n": 4, "s": "map"})
            log.info("no arguments %s")
            log.info("%d%% of %s", 5, ("a", 1))

        run_in_loop(kind, turn)
    finally:
        log.removeHandler(keep)
    fmt = TimedFormatter()
    assert path.read_text().splitlines() == [fmt.format(logging.makeLogRecord(dict(r.__dict__))) for r in seen]


def test_a_filter_on_the_handler_still_decides(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, h = logged
    h.addFilter(lambda r: "secret" not in r.getMessage())
    try:
        async def turn() -> None:
            log.info("shown")
            log.info("a %s line", "secret")
            log.info("shown too")

        run_in_loop("asyncio", turn)
    finally:
        h.filters.clear()
    assert log_lines(path) == ["shown", "shown too"]


def test_an_object_argument_shows_its_text_at_the_call(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    arg = _Text()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    log.addHandler(keep)
    try:
        async def turn() -> None:
            log.info("identity %s", arg)
            arg.text = "after"

        run_in_loop("asyncio", turn)
    finally:
        log.removeHandler(keep)
    assert log_lines(path) == ["identity before"]
    assert records[0].args == (arg,) and records[0].msg == "identity %s"  # the other handler's record as logged


@pytest.mark.parametrize("journal", [False, True])
def test_a_line_that_cannot_be_made_is_reported_and_the_others_written(

        journal: bool, logged: tuple[logging.Logger, Path, logging.Handler], monkeypatch: pytest.MonkeyPatch) -> None:
    log, path, h = logged
    if journal:
        h.setFormatter(startup.JournalFormatter())
    failed: list[logging.LogRecord] = []
    monkeypatch.setattr(h, "handleError", failed.append)

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(log.name, logging.INFO, __file__, 1, msg, args, None)

    async def turn() -> None:  # to the handler alone (pytest's capture handler raises on the bad one)
        for r in (record("before %s", "x"), record("count %d", "not a number"), record("after")):
            h.handle(r)
        await next_turn()

    run_in_loop("asyncio", turn)
    lines = path.read_text().splitlines()
    if journal:
        assert lines == ["<6>[core_ike.test_log_file] before x", "<6>[core_ike.test_log_file] after"]
    else:
        assert log_lines(path) == ["before x", "after"]
    assert [r.msg for r in failed] == ["count %d"]


def test_a_replaced_timed_format_writes_the_lines(logged: tuple[logging.Logger, Path, logging.Handler],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log, path, _ = logged
    plain = TimedFormatter.format

    def marked(self: TimedFormatter, record: logging.LogRecord) -> str:
        return plain(self, record) + " (marked)"

    monkeypatch.setattr(startup.TimedFormatter, "format", marked)

    async def turn() -> None:
        log.info("generating %s request %d", "IKE_AUTH", 1)

    run_in_loop("asyncio", turn)
    assert log_lines(path) == ["generating IKE_AUTH request 1 (marked)"]


def test_a_line_across_a_second_boundary_gets_its_own_second(logged: tuple[logging.Logger, Path,
                                                                            logging.Handler]) -> None:
    log, path, _ = logged
    stamps = iter([(1700000000.998, 998.0), (1700000001.002, 2.0)])

    def stamp(r: logging.LogRecord) -> bool:
        r.created, r.msecs = next(stamps)  # as if logged then (filters run before the handler)
        return True

    log.addFilter(stamp)
    try:
        async def turn() -> None:
            log.info("one")
            log.info("two")

        run_in_loop("asyncio", turn)
    finally:
        log.removeFilter(stamp)
    first, second = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (1700000000, 1700000001))
    assert path.read_text().splitlines() == [f"{first}.998 [{log.name}] one", f"{second}.002 [{log.name}] two"]


def test_a_line_after_the_loop_stopped_is_written_at_once(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    """asyncio's loop stops before the write it queued runs: a line logged afterwards, outside any loop,
    is written at once, after the kept one."""
    log, path, _ = logged
    loop = asyncio.new_event_loop()

    def callback() -> None:
        log.info("in the last callback")
        loop.stop()  # the write queued after this callback would run in the next iteration

    try:
        loop.call_soon(callback)
        loop.run_forever()
        assert log_lines(path) == []  # its write is still queued on the stopped loop
        log.info("after the loop")
        assert log_lines(path) == ["in the last callback", "after the loop"]
    finally:
        loop.close()


def test_the_running_loop_is_looked_up_once_per_batch(logged: tuple[logging.Logger, Path, logging.Handler],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio._get_running_loop costs a system call (it compares the process id): once per batch of a
    callback's lines, not per line."""
    log, path, _ = logged
    calls: list[int] = []
    real = asyncio._get_running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        calls.append(1)
        return real()

    monkeypatch.setattr(asyncio, "_get_running_loop", counted)

    async def turn() -> None:
        for i in range(14):
            log.info("line %d", i)
        n = len(calls)
        await next_turn()
        log.info("next callback")
        assert (n, len(calls)) == (1, 2)

    run_in_loop("asyncio", turn)
    assert log_lines(path) == [*(f"line {i}" for i in range(14)), "next callback"]


def test_journal_lines_are_journal_formatters_text(tmp_path: Path) -> None:
    """Under journald (stderr, JournalFormatter): the handler's lines are JournalFormatter.format's text,
    for one-line messages and for those the journal gets as several lines."""
    path = tmp_path / "journal.log"
    stream = path.open("w")
    h = startup.LoopBatchingHandler(stream)
    h.setFormatter(startup.JournalFormatter())
    log = logging.getLogger("core_ike.test_log_journal")
    log.handlers[:], log.propagate, log.level = [h], False, logging.DEBUG
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log.addHandler(Keep())
    try:
        async def turn() -> None:
            log.debug("parsed %s request %d %s", "IKE_AUTH", 1, "[ IDi AUTH ]")
            log.info("two\nlines")
            log.info("carriage\rreturn %s", "x")
            log.info("")
            log.warning("retransmit %d of request with message ID %d", 2, 0)
            log.error("%s", "e\u2028f")

        run_in_loop("asyncio", turn)
    finally:
        log.handlers[:] = []
        h.close()
        stream.close()
    fmt = startup.JournalFormatter()
    assert path.read_text() == "".join(fmt.format(logging.makeLogRecord(dict(r.__dict__))) + "\n" for r in seen)
