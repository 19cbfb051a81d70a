"""The batch formatters' short cuts give logging's text (core_ike/daemon/startup.py, TimedFormatter.lines and
JournalFormatter.lines): the milliseconds from a table where they are 0 to 999 and formatted otherwise, the
message made without LogRecord.getMessage's frame for logging's own records (a message that is not a
string included), and a record class with a getMessage of its own still asked for it."""

from __future__ import annotations

import logging

import pytest

from core_ike.daemon.logrecords import lean_record
from core_ike.daemon.startup import JournalFormatter, TimedFormatter

TIMED = "%(asctime)s.%(msecs)03d [%(name)s] %(message)s"


class _Shouting(logging.LogRecord):
    def getMessage(self) -> str:
        return super().getMessage().upper()


def _record(msg: object, args: tuple[object, ...], msecs: float | None = None,
            cls: type[logging.LogRecord] = logging.LogRecord) -> logging.LogRecord:
    r = cls("core_ike.ike", logging.INFO, "(unknown file)", 0, msg, args, None)
    if msecs is not None:
        r.msecs = msecs
    return r


@pytest.mark.parametrize("msecs", [0.0, 7.9, 42.0, 999.99, 1000.0, 1234.5, -3.0])
def test_milliseconds_as_logging_formats_them(msecs: float) -> None:
    r = _record("sending packet: from %s[%d]", ("192.0.2.1", 500), msecs)
    ours = TimedFormatter().lines([(r, None)])
    assert ours == [logging.Formatter(TIMED, "%H:%M:%S").format(r)]


@pytest.mark.parametrize("make", [logging.LogRecord, lean_record])
@pytest.mark.parametrize(("msg", "args"), [
    ("IKE_SA %s[%d] established", ("home", 1)),
    ("no arguments %s", ()),
    (ValueError("an object as the message: %s"), ("its argument",)),
    (42, ()),
    ("%(n)d %(s)s", ({"n": 4, "s": "map"},)),
])
def test_message_text_as_get_message(make: object, msg: object, args: tuple[object, ...]) -> None:
    r = make("core_ike.ike", logging.INFO, "(unknown file)", 0, msg, args, None)  # type: ignore[operator]
    text = r.getMessage()
    [timed] = TimedFormatter().lines([(r, None)])
    [journal] = JournalFormatter().lines([(r, None)])
    assert timed.endswith(f" [core_ike.ike] {text}")
    assert journal == f"<6>[core_ike.ike] {text}"


def test_a_record_class_with_its_own_get_message_is_asked() -> None:
    r = _record("quiet %s", ("words",), cls=_Shouting)
    assert TimedFormatter().lines([(r, None)])[0].endswith("[core_ike.ike] QUIET WORDS")
    assert JournalFormatter().lines([(r, None)]) == ["<6>[core_ike.ike] QUIET WORDS"]
