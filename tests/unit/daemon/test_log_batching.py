"""Log lines cost less without changing (core_ike/daemon/startup.py): each target's formatter gives
logging.Formatter's text for the same record, and inside an event loop the lines of one loop turn
are written together at its end, in order; WARNING and worse, a full batch, flush(), close(), the
end of run_daemon and lines outside an event loop are written at once (docs/operations.md, "Logging")."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core_ike.daemon import startup
from core_ike.daemon.startup import (
    JournalFormatter,
    LineFormatter,
    TimedFormatter,
    TurnBatchingHandler,
    log_handler,
    run_daemon,
    write_pieces,
)
from core_ike.logutil import LeanRecord, cheap_records

LINE = "[%(name)s] %(message)s"
TIMED = f"%(asctime)s.%(msecs)03d {LINE}"


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def _run(kind: str, coro_fn: Callable[[], object]) -> None:
    factory = None
    if kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro_fn())  # type: ignore[arg-type]


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


def test_each_target_uses_the_fast_formatters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    f = log_handler(f"file:{tmp_path}/a.log", "iked")
    s = log_handler("stderr", "iked")
    try:
        assert isinstance(f, TurnBatchingHandler) and isinstance(f, logging.FileHandler)
        assert isinstance(s, TurnBatchingHandler) and isinstance(f.formatter, TimedFormatter)
        assert isinstance(s.formatter, TimedFormatter)
    finally:
        f.close()
        s.close()


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path, logging.Handler]]:
    """A logger writing to a file through the daemons' file handler."""
    path = tmp_path / "d.log"
    h = log_handler(f"file:{path}", "iked")
    log = logging.getLogger("core_ike.test_batching")
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate, log.level = [h], False, logging.DEBUG
    try:
        yield log, path, h
    finally:
        log.handlers[:], log.propagate, log.level = saved
        h.close()


def _lines(path: Path) -> list[str]:
    return [line.split(" ", 2)[2] for line in path.read_text().splitlines()]


def test_no_event_loop_writes_at_once(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    log.info("one")
    assert _lines(path) == ["one"]
    log.debug("two")
    assert _lines(path) == ["one", "two"]


@pytest.mark.parametrize("kind", _loops())
def test_a_turns_lines_are_written_at_its_end_in_order(
        kind: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[list[str]] = []

    async def main() -> None:
        log.info("a %d", 1)
        log.debug("b")
        seen.append(_lines(path))  # batched: nothing written yet
        await asyncio.sleep(0)  # one loop turn
        seen.append(_lines(path))
        log.info("c")
        log.warning("w")  # at once, after what waits before it
        seen.append(_lines(path))
        log.info("d")
        log.error("e")
        log.info("f")
        await asyncio.sleep(0)
        seen.append(_lines(path))

    _run(kind, main)
    assert seen == [[], ["a 1", "b"], ["a 1", "b", "c", "w"], ["a 1", "b", "c", "w", "d", "e", "f"]]


@pytest.mark.parametrize("kind", _loops())
def test_a_full_batch_is_written_within_the_turn(
        kind: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[int] = []
    n = startup.WRITE_BOUND // 8000 + 2

    async def main() -> None:
        for i in range(n):
            log.info("%d %s", i, "x" * 8000)
        seen.append(len(_lines(path)))  # still in the turn

    _run(kind, main)
    assert seen == [n - 1]  # the line that took the batch past the bound, and those before it
    assert len(_lines(path)) == n


@pytest.mark.parametrize("end", ["flush", "close"])
def test_flush_and_close_write_the_batch(end: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, h = logged
    seen: list[list[str]] = []

    async def main() -> None:
        log.info("pending")
        seen.append(_lines(path))
        getattr(h, end)()
        seen.append(_lines(path))

    _run("asyncio", main)
    assert seen == [[], ["pending"]]


def test_lines_of_a_loop_that_stopped_mid_turn_come_before_later_ones(
        logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    loop = asyncio.new_event_loop()

    async def main() -> None:
        log.info("last turn")
        loop.stop()  # the loop ends before the end-of-turn write runs

    task = loop.create_task(main())
    loop.run_forever()
    assert task.done()
    loop.close()
    log.info("after the loop")
    assert _lines(path) == ["last turn", "after the loop"]

    async def again() -> None:  # a new loop gets its own end-of-turn write
        log.info("new loop")
        await asyncio.sleep(0)
        assert _lines(path)[-1] == "new loop"

    _run("asyncio", again)


def test_stream_target_batches_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    h = log_handler("stdout", "iked")
    assert isinstance(h, logging.StreamHandler)
    out = io.StringIO()
    h.setStream(out)
    log = logging.getLogger("core_ike.test_batching_stream")
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate, log.level = [h], False, logging.INFO
    seen: list[str] = []

    async def main() -> None:
        log.info("x")
        seen.append(out.getvalue())
        await asyncio.sleep(0)
        seen.append(out.getvalue())

    try:
        _run("asyncio", main)
    finally:
        log.handlers[:], log.propagate, log.level = saved
        h.close()
    assert seen[0] == "" and seen[1].endswith(" [core_ike.test_batching_stream] x\n")


@pytest.fixture
def root_to_file(tmp_path: Path) -> Iterator[Path]:
    """The root logger to a file (as setup_logging sets it up); `_daemon_log` logs through it."""
    path = tmp_path / "root.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    h = log_handler(f"file:{path}", "iked")
    root.handlers[:], root.level = [h], logging.INFO
    try:
        yield path
    finally:
        root.handlers[:], root.level = saved
        h.close()


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
    assert _lines(root_to_file) == ["stopping", "closed"]


def test_an_exception_that_ends_the_daemon_loses_no_line(root_to_file: Path) -> None:
    log = _daemon_log()

    async def run() -> None:
        log.info("before the failure")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        run_daemon("iked", run, lambda: None, event_loop="asyncio")
    assert _lines(root_to_file) == ["before the failure"]


def test_a_start_up_failure_line_follows_the_logged_ones(root_to_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log = _daemon_log()

    async def run() -> None:
        log.info("binding")
        raise OSError(99, "Cannot assign requested address")

    assert run_daemon("iked", run, lambda: None, event_loop="asyncio") == startup.STARTUP_FAILED
    assert _lines(root_to_file) == ["binding", "cannot start: Cannot assign requested address"]
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
    assert logging.getLogRecordFactory() is LeanRecord
    ours, theirs = vars(LeanRecord(*args)), vars(logging.LogRecord(*args))  # type: ignore[arg-type]
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
    assert _lines(path) == ["IKE_SA home[1] established between 192.0.2.1...198.51.100.7", "4 map"]


def test_pieces_end_at_lines_and_fit_an_atomic_pipe_write() -> None:
    lines = [f"{i:04d} " + "x" * 995 + "\n" for i in range(10)]  # 1000 bytes each
    pieces = list(write_pieces(lines))
    assert "".join(pieces) == "".join(lines)
    assert all(p.endswith("\n") and len(p.encode()) <= startup.ATOMIC_WRITE for p in pieces)
    assert len(pieces) == -(-10000 // (startup.ATOMIC_WRITE // 1000 * 1000))
    assert list(write_pieces(["é" * startup.ATOMIC_WRITE + "\n", "a\n"])) == ["é" * startup.ATOMIC_WRITE + "\n", "a\n"]
    assert list(write_pieces(["a\n", "b\n"])) == ["a\nb\n"]


def test_a_turn_is_written_in_atomic_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, s: str) -> int:
            self.writes.append(s)
            return super().write(s)

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    h = log_handler("stdout", "iked")
    assert isinstance(h, logging.StreamHandler)
    out = Writes()
    h.setStream(out)
    log = logging.getLogger("core_ike.test_batching_pieces")
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate, log.level = [h], False, logging.INFO

    async def main() -> None:
        for i in range(20):
            log.info("%02d %s", i, "y" * 500)
        await asyncio.sleep(0)

    try:
        _run("asyncio", main)
    finally:
        log.handlers[:], log.propagate, log.level = saved
        h.close()
    assert len(out.getvalue().splitlines()) == 20
    assert 1 < len(out.writes) < 20
    assert all(w.endswith("\n") and len(w.encode()) <= startup.ATOMIC_WRITE for w in out.writes)
