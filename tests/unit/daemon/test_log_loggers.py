"""The daemons' loggers hand their handlers the records logging.Logger would, in fewer calls
(core_ike/daemon/logrecords.py LeanLogger, lean_loggers): the same attributes for every kind of call, the
logger's filters and its disabled flag still obeyed, and logging's own path whenever a caller lookup, a
traceback, a stack or extra attributes are asked for."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from core_ike.daemon.logrecords import LeanLogger, LeanRecord, cheap_records, lean_loggers


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """logging's switches, record factory, logger class and its loggers' classes as they were before."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing", "_logRecordFactory"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    if hasattr(logging, "logAsyncioTasks"):
        monkeypatch.setattr(logging, "logAsyncioTasks", logging.logAsyncioTasks)
    kind = logging.getLoggerClass()
    classes = {name: type(lg) for name, lg in logging.Logger.manager.loggerDict.items()}
    yield
    logging.setLoggerClass(kind)
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        lg.__class__ = classes.get(name, logging.Logger if type(lg) is LeanLogger else type(lg))


def _pair(name: str = "core_ike.test") -> tuple[tuple[logging.Logger, _Keep], tuple[logging.Logger, _Keep]]:
    out = []
    for cls in (logging.Logger, LeanLogger):
        lg, keep = cls(name), _Keep()
        lg.addHandler(keep)
        lg.propagate = False
        out.append((lg, keep))
    return out[0], out[1]


def _same(a: logging.LogRecord, b: logging.LogRecord) -> None:
    ours, theirs = dict(vars(a)), dict(vars(b))
    for t in ("created", "msecs", "relativeCreated"):  # the clock moved between the two
        assert isinstance(ours.pop(t), float)
        theirs.pop(t)
    if theirs.get("exc_info") is not None:  # the same exception, caught twice: tracebacks differ in frames
        assert ours.pop("exc_info")[1] is theirs.pop("exc_info")[1]
    assert ours == theirs


CALLS: list[Callable[[logging.Logger], None]] = [
    lambda lg: lg.info("generating %s request %d %s", "IKE_AUTH", 1, "[ IDi AUTH ]"),
    lambda lg: lg.info("%(n)d %(s)s", {"n": 4, "s": "map"}),
    lambda lg: lg.info("no arguments"),
    lambda lg: lg.warning("error sending to %s[%d]: %s", "192.0.2.1", 500, "refused"),
    lambda lg: lg.debug("debug %d", 7),
    lambda lg: lg.log(logging.ERROR, "%d more %s message(s) suppressed", 3, "bad"),
    lambda lg: lg.info("with extra %s", "x", extra={"peer": "moon"}),
    lambda lg: lg.info("with a stack", stack_info=True),
    lambda lg: lg.info("stack level", stacklevel=2),
]


@pytest.mark.usefixtures("restored")
@pytest.mark.parametrize("cheap", [True, False])
@pytest.mark.parametrize("call", range(len(CALLS)))
def test_a_lean_logger_hands_on_logging_loggers_records(call: int, cheap: bool) -> None:
    if cheap:
        cheap_records()
        assert logging.getLogRecordFactory() is LeanRecord
    (plain, theirs), (lean, ours) = _pair()
    for lg in (plain, lean):
        lg.setLevel(logging.DEBUG)
        CALLS[call](lg)
    assert len(ours.records) == len(theirs.records) == 1
    if ours.records[0].stack_info:  # the stack names the line of the call, the same for both but the last
        ours.records[0].stack_info = theirs.records[0].stack_info = None
    _same(ours.records[0], theirs.records[0])
    if not cheap:  # the caller lookup is still made when it is on: this file, the line of the call
        assert ours.records[0].pathname == __file__ and ours.records[0].lineno > 0


@pytest.mark.usefixtures("restored")
def test_exceptions_keep_their_traceback() -> None:
    cheap_records()
    (plain, theirs), (lean, ours) = _pair()
    try:
        raise ValueError("boom")
    except ValueError:
        for lg in (plain, lean):
            lg.exception("internal error on a %d-byte datagram", 60)
    _same(ours.records[0], theirs.records[0])
    assert ours.records[0].exc_info is not None and ours.records[0].levelno == logging.ERROR


@pytest.mark.usefixtures("restored")
def test_filters_levels_and_disabled_still_hold() -> None:
    cheap_records()
    _, (lean, ours) = _pair()
    lean.setLevel(logging.INFO)
    lean.debug("below the level")
    lean.addFilter(lambda r: "secret" not in r.getMessage())
    lean.info("a %s", "secret")
    lean.info("a %s", "line")
    lean.removeFilter(lean.filters[0])
    lean.disabled = True
    lean.info("disabled")
    lean.disabled = False
    ours.setLevel(logging.WARNING)
    lean.info("below the handler's level")
    assert [r.getMessage() for r in ours.records] == ["a line"]


@pytest.mark.usefixtures("restored")
def test_lean_loggers_turns_the_plain_ones_and_later_ones() -> None:
    before = logging.getLogger("core_ike.test.before")

    class Own(logging.Logger):
        pass

    own = Own("core_ike.test.own")
    logging.Logger.manager.loggerDict[own.name] = own
    try:
        lean_loggers()
        assert type(before) is LeanLogger
        assert type(own) is Own  # a logger class of someone else's is left alone
        assert type(logging.getLogger("core_ike.test.after")) is LeanLogger
        assert type(logging.getLogger()) is logging.RootLogger
    finally:
        del logging.Logger.manager.loggerDict[own.name]


class _Own(logging.LogRecord):
    def getMessage(self) -> str:
        return "own " + super().getMessage()


@pytest.mark.parametrize("record", [
    logging.LogRecord("core_ike.ike", logging.INFO, "(unknown file)", 0, "parsed %s %s %d", ("IKE_AUTH", "request", 1),
                      None),
    LeanRecord("core_ike.ike", logging.INFO, "(unknown file)", 0, "%(n)d %(s)s", ({"n": 4, "s": "map"},), None),
    LeanRecord("core_ike.ike", logging.INFO, "(unknown file)", 0, "100%", (), None),
    LeanRecord("core_ike.ike", logging.INFO, "(unknown file)", 0, ValueError("not a string"), (), None),
    _Own("core_ike.ike", logging.INFO, "(unknown file)", 0, "sub %d", (3,), None),
])
def test_the_batched_lines_make_getmessages_text(record: logging.LogRecord) -> None:
    from core_ike.daemon.startup import JournalFormatter, TimedFormatter

    for fmt, theirs in ((TimedFormatter(), "%(asctime)s.%(msecs)03d [%(name)s] %(message)s"),
                        (JournalFormatter(), "<6>[%(name)s] %(message)s")):
        want = logging.Formatter(theirs, "%H:%M:%S").format(logging.makeLogRecord(dict(vars(record)))) + "\n"
        if isinstance(record, _Own):
            want = want.replace("] sub 3", "] own sub 3")
        assert fmt.lines([(record, None)], "\n") == [want]
