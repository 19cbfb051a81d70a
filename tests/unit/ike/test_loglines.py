"""core_ike/ike/loglines.py gives the handlers the record logging.Logger.info gives them: the same
attributes (caller, arguments, level, name), through the logger's filters, nothing below its level;
with records that carry no caller (cheap_records) and with records that do."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from core_ike.ike import loglines

_VOLATILE = {"created", "msecs", "relativeCreated", "thread", "threadName", "process", "processName",
             "taskName"}


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, _Keep]]:
    log = logging.getLogger("core_ike.test_loglines")
    h = _Keep()
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log, h
    finally:
        log.removeHandler(h)
        log.propagate = True
        log.setLevel(logging.NOTSET)


def _attrs(r: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(r).items() if k not in _VOLATILE}


@pytest.mark.parametrize("srcfile", [None, logging._srcfile])
def test_the_record_is_logger_info_s(kept: tuple[logging.Logger, _Keep], monkeypatch: pytest.MonkeyPatch,
                                     srcfile: str | None) -> None:
    log, h = kept
    monkeypatch.setattr(logging, "_srcfile", srcfile)
    args = ("192.0.2.1", 500, "192.0.2.2", 500, 232)
    fmt = "received packet: from %s[%d] to %s[%d] (%d bytes)"
    log.info(fmt, *args)
    loglines.info(log, fmt, *args)  # the next line
    loglines.enabled_info(log, fmt, *args)  # the line after
    ref, a, b = h.records
    assert a.getMessage() == b.getMessage() == ref.getMessage() == "received packet: from 192.0.2.1[500] to 192.0.2.2[500] (232 bytes)"
    want = _attrs(ref)
    if srcfile is None:  # no caller in any record
        assert ref.lineno == 0 and ref.funcName == "(unknown function)"
        assert _attrs(a) == want and _attrs(b) == want
    else:  # the caller of loglines, as Logger.info names its caller
        assert (a.lineno, b.lineno) == (ref.lineno + 1, ref.lineno + 2) and ref.pathname == __file__
        for r in (a, b):
            assert _attrs(r) == {**want, "lineno": r.lineno}
            assert r.funcName == ref.funcName == "test_the_record_is_logger_info_s"


def test_below_the_level_nothing_and_filters_apply(kept: tuple[logging.Logger, _Keep]) -> None:
    log, h = kept
    log.setLevel(logging.WARNING)
    loglines.info(log, "not %s", "logged")
    assert h.records == []
    log.setLevel(logging.INFO)
    log.addFilter(lambda r: "secret" not in r.getMessage())
    loglines.info(log, "a %s line", "secret")
    loglines.enabled_info(log, "a %s line", "secret")
    loglines.info(log, "a %s line", "plain")
    assert [r.getMessage() for r in h.records] == ["a plain line"]


def test_a_single_mapping_is_the_arguments(kept: tuple[logging.Logger, _Keep]) -> None:
    log, h = kept
    loglines.info(log, "%(who)s", {"who": "c1@bench"})
    log.info("%(who)s", {"who": "c1@bench"})
    assert [r.getMessage() for r in h.records] == ["c1@bench", "c1@bench"]
