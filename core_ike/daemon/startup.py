"""What the daemons need before they run: the log destination and one-line start-up failures.

Log lines keep strongSwan's shape behind a time stamp and the logger name. Under systemd, journald
reads stderr: the daemon then leaves the time stamp to journald and marks each line with its
priority the way sd-daemon(3) describes (`<6>` info, `<4>` warning, ...).

To stderr, stdout or a file, the records of one event-loop callback are kept and formatted and
written together after it (LoopBatchingHandler), so the datagrams that callback sends leave before
the log costs anything; a control reply and a service-manager notification write what is kept first
(flush_logs), so the log holds a line by the time the reply or notification that followed it leaves.
What else makes a line cheap is the formatting (the time of day made once per second) and the
record (core_ike/daemon/logrecords.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from logging.handlers import SysLogHandler
from typing import Any, NoReturn, TextIO

from ..errors import LocalError

EXIT_STATUS = ("exit status: 0 after SIGTERM or SIGINT; 2 when the configuration or the start-up fails "
               "(one line on stderr says why)")
STARTUP_FAILED = 2
SYSLOG_SOCKET = "/dev/log"

_LINE = "[%(name)s] %(message)s"
_TIME_FORMAT = "%H:%M:%S"
BATCH_RECORDS = 256  # records kept before they are written within the loop callback
ATOMIC_WRITE = getattr(select, "PIPE_BUF", 512)  # bytes; 512 is the POSIX minimum
_FIXED = (str, int, float, bytes, type(None))  # arguments whose text cannot change after the call
_FIXED_TYPES = frozenset((str, int, float, bool, bytes, type(None)))
_MILLIS_OF = {float(i): f"{i:03d}" for i in range(1000)}  # "%(msecs)03d" of 0.0 to 999.0: no int call per line


def _with_tail(f: logging.Formatter, record: logging.LogRecord, s: str) -> str:
    """`s` followed by the record's traceback and stack, as logging.Formatter.format appends them."""
    if record.exc_info and not record.exc_text:
        record.exc_text = f.formatException(record.exc_info)
    if record.exc_text:
        s = (s if s[-1:] == "\n" else s + "\n") + record.exc_text
    if record.stack_info:
        s = (s if s[-1:] == "\n" else s + "\n") + f.formatStack(record.stack_info)
    return s


class LineFormatter(logging.Formatter):
    """logging.Formatter("[%(name)s] %(message)s") without the general format's dictionary lookups."""

    def __init__(self) -> None:
        super().__init__(_LINE)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        return _with_tail(self, record, f"[{record.name}] {record.message}")


class TimedFormatter(logging.Formatter):
    """The text of logging.Formatter("%(asctime)s.%(msecs)03d [%(name)s] %(message)s", "%H:%M:%S"),
    with the time of day formatted once per second rather than per line (time.strftime and
    time.localtime are the dearest part of a line)."""

    def __init__(self) -> None:
        super().__init__(f"%(asctime)s.%(msecs)03d {_LINE}", _TIME_FORMAT)
        # the start of the second last formatted and its time of day, one tuple: a reader in another thread
        # sees a pair; a float, so that lines() compares each record's time with it float to float
        self._second: tuple[float, str] = (-1.0, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = float(int(record.created))  # time.localtime() rounds toward the earlier second as well
        cached, text = self._second
        if second != cached or datefmt not in (None, _TIME_FORMAT):
            text = time.strftime(datefmt or _TIME_FORMAT, self.converter(record.created))
            if datefmt in (None, _TIME_FORMAT):
                self._second = (second, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, _TIME_FORMAT)
        return self.lines(((record, record.message),))[0]

    def lines(self, batch: Iterable[tuple[logging.LogRecord, str | None]], term: str = "") -> list[str]:
        """format(record) + `term` for each (record, its message or None to make it) of `batch`, without
        setting the record's message and asctime: the one place this format's text is written (format
        calls it for one record; LoopBatchingHandler for a batch, without a call per line)."""
        second, stamp = self._second
        end = second + 1.0
        out: list[str] = []
        for r, text in batch:
            if text is None:
                text = r.getMessage()
            created = r.created
            if not second <= created < end:  # int(created) != second, without the int call per line
                stamp = self.formatTime(r, _TIME_FORMAT)
                second = float(int(created))
                end = second + 1.0
            ms = _MILLIS_OF.get(r.msecs)
            if ms is None:
                ms = f"{int(r.msecs):03d}"
            line = f"{stamp}.{ms} [{r.name}] {text}{term}"
            if r.exc_info or r.stack_info:
                line = _with_tail(self, r, line[:len(line) - len(term)]) + term
            out.append(line)
        return out


_TIMED_FORMAT = TimedFormatter.format  # LoopBatchingHandler calls lines() while format is this one


class JournalFormatter(LineFormatter):
    """Each line prefixed with its syslog priority (sd-daemon(3)); journald adds the time."""

    def __init__(self, fmt: str = _LINE) -> None:
        if fmt != _LINE:
            raise ValueError(f"JournalFormatter formats {_LINE!r} only")
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        return self.lines(((record, record.message),))[0]

    def lines(self, batch: Iterable[tuple[logging.LogRecord, str | None]], term: str = "") -> list[str]:
        """format(record) + `term` for each (record, its message or None to make it) of `batch`, without
        setting the record's message: the one place this format's text is written (format calls it for
        one record; LoopBatchingHandler for a batch, without a call per line)."""
        out: list[str] = []
        for r, text in batch:
            if text is None:
                text = r.getMessage()
            line = f"<{_priority(r.levelno)}>[{r.name}] {text}{term}"
            if r.exc_info or r.stack_info or not (text.isprintable() and r.name.isprintable()):
                line = self._marked(r, line[:len(line) - len(term)]) + term
            out.append(line)
        return out

    def _marked(self, record: logging.LogRecord, line: str) -> str:
        """`line` (marked with its priority) and the record's traceback and stack, each of their lines
        marked: journald takes a line break as the end of an entry (str.splitlines' boundaries, as
        logging's own multi-line records are split)."""
        first, *rest = _with_tail(self, record, line).splitlines()
        mark = line[:line.index(">") + 1]
        return "\n".join([first, *(mark + x for x in rest)])


def _priority(lv: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3): 7 debug, 6 info, 4 warning, 3 error, 2 crit)."""
    return 7 if lv <= logging.DEBUG else 6 if lv <= logging.INFO else 4 if lv <= logging.WARNING \
        else 3 if lv <= logging.ERROR else 2


_JOURNAL_FORMAT = JournalFormatter.format  # LoopBatchingHandler calls lines() while format is this one


def write_pieces(lines: list[str]) -> Iterator[str]:
    """`lines` joined into pieces of at most ATOMIC_WRITE bytes, cut only between lines (a longer
    line is a piece of its own): the workers of iked share the supervisor's stderr, and a pipe takes
    a write of up to PIPE_BUF bytes whole, never mixed with another process's (POSIX write(2))."""
    start = size = 0
    for i, line in enumerate(lines):
        n = len(line) if line.isascii() else 4 * len(line)  # at most 4 bytes a character (UTF-8)
        if size + n > ATOMIC_WRITE and i > start:
            yield "".join(lines[start:i])
            start, size = i, 0
        size += n
    yield "".join(lines[start:])


def _fixed_args(args: object) -> bool:
    """True when the message's arguments are values whose text cannot change before a later format
    (strings, numbers, bytes, None, tuples of them): such records are formatted after the callback.
    The exact built-in types are checked first, in one pass without a Python call per argument: they
    are nearly all the arguments of the daemons' lines."""
    if type(args) is not tuple:
        return not args  # a mapping (log("%(a)s", {...})): its values may change
    if _FIXED_TYPES.issuperset(map(type, args)):
        return True
    return all(isinstance(a, _FIXED) or (isinstance(a, tuple) and all(isinstance(b, _FIXED) for b in a))
               for a in args)


class LoopBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop, keeps the records of the current loop
    callback and formats and writes them together after it: the first record of a batch queues one
    loop.call_soon callback, which runs after the callback that logged (and sent its datagrams).
    A record keeps its creation time (the formatters read record.created), and a record whose
    arguments could change before the write (objects, mappings) has its message made at once.

    Written at once, after what is kept before it so the order holds: a WARNING or worse record,
    a batch of BATCH_RECORDS records (so a flood of lines cannot grow memory), and every record
    logged outside a running loop (start-up, shutdown, other threads such as the netlink worker).
    flush() and close() write the batch; logging's exit hook (logging.shutdown, run atexit) flushes
    every handler, so a normal stop, SIGTERM or an exception that ends the daemon loses nothing; a
    SIGKILL loses at most the records of the callback it interrupts. The handler's lock (held by
    Handler.handle around emit, taken by flush and the loop callback) orders the threads."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._batch: list[tuple[logging.LogRecord, str | None]] = []  # a record, its message if made already
        self._loop: asyncio.AbstractEventLoop | None = None  # where the write after the callback is queued
        self._thread = 0  # the thread that runs self._loop

    def handle(self, record: logging.LogRecord) -> bool:
        """logging.Handler.handle, without the filter call when the handler has no filters."""
        if self.filters:
            return super().handle(record)
        with self.lock:  # type: ignore[union-attr]
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held (Handler.handle)
        text = None
        args = record.args  # the common case first: a tuple of built-in values
        if args and (type(args) is not tuple or not _FIXED_TYPES.issuperset(map(type, args))) \
                and not _fixed_args(args):
            try:
                text = record.getMessage()
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit: reported by handleError
                self.handleError(record)
                return
        batch = self._batch
        batch.append((record, text))
        if record.levelno >= logging.WARNING or len(batch) >= BATCH_RECORDS:
            self._write()
            return
        queued = self._loop
        if queued is not None and self._thread == threading.get_ident() and queued.is_running():
            return  # the write after this callback is queued on the loop this thread runs
        # asyncio._get_running_loop compares the process id (a getpid system call) at each call:
        # asked once per batch, not per line
        loop = asyncio._get_running_loop()
        if loop is None:
            self._write()
        elif loop is not queued:
            self._loop, self._thread = loop, threading.get_ident()
            loop.call_soon(self._after_callback)

    def _after_callback(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._loop = None
            self._write()

    def _write(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        lines = self._lines(batch)
        try:
            stream = self._stream()
            if not lines or stream is None:
                return
            data = "".join(lines)
            if len(data) <= ATOMIC_WRITE // 4 or (len(data) <= ATOMIC_WRITE and data.isascii()):
                stream.write(data)  # one atomic write (write_pieces would not cut it)
                stream.flush()
            else:
                for piece in write_pieces(lines):
                    stream.write(piece)
                    stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit: reported by handleError
            self.handleError(batch[0][0])

    def _lines(self, batch: list[tuple[logging.LogRecord, str | None]]) -> list[str]:
        """The batch's lines as self.format gives them: by the formatter's lines() in one call when it is
        TimedFormatter or JournalFormatter and its format is the class's own (a benchmark may replace
        format to change the text), else by format, record by record."""
        fmt = self.formatter
        term = self.terminator
        lean: Callable[[Iterable[tuple[logging.LogRecord, str | None]], str], list[str]] | None = None
        if (type(fmt) is TimedFormatter and TimedFormatter.format is _TIMED_FORMAT) or \
                (type(fmt) is JournalFormatter and JournalFormatter.format is _JOURNAL_FORMAT):
            lean = fmt.lines
            try:
                return lean(batch, term)
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - a record that cannot be formatted: record by record below
                pass
        lines: list[str] = []
        for r, text in batch:
            try:
                if lean is not None:
                    lines += lean(((r, text),), term)
                elif text is None:
                    lines.append(self.format(r) + term)
                else:
                    kept = copy.copy(r)  # other handlers see the caller's record unchanged
                    kept.msg, kept.args = text, ()
                    lines.append(self.format(kept) + term)
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit: reported by handleError
                self.handleError(r)
        return lines

    def _stream(self) -> TextIO | None:
        return self.stream  # type: ignore[no-any-return]

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()
            super().flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()


class LoopBatchingFileHandler(LoopBatchingHandler, logging.FileHandler):
    """logging.FileHandler (append mode, so a logrotate copytruncate keeps working) with
    LoopBatchingHandler's writes."""

    def __init__(self, filename: str) -> None:
        logging.FileHandler.__init__(self, filename)
        self._batch = []
        self._loop = None
        self._thread = 0

    def _stream(self) -> TextIO | None:
        if self.stream is None:  # closed: opened again for a late line, as logging.FileHandler.emit does
            self.stream = self._open()
        return self.stream


def flush_logs() -> None:
    """Write what the root logger's handlers keep: before a control reply or a notification (whoever
    receives it may read the log next), before a line printed past them, and at the end."""
    for h in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # a broken log must not hide why the daemon stops
            h.flush()


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd gave us ($JOURNAL_STREAM = "DEVICE:INODE")."""
    want = os.environ.get("JOURNAL_STREAM")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class QuietSysLogHandler(SysLogHandler):
    """As syslog(3): a line the syslog daemon cannot take (it restarts) is dropped, and the next one
    reconnects; never a traceback on stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def _check_syslog(path: str) -> None:
    """SysLogHandler starts without a listener (and fails at each line); at start-up that is an error."""
    err: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as s:
            try:
                s.connect(path)
                return
            except OSError as e:
                err = e
    reason = err.strerror if err is not None and err.strerror else str(err)
    raise LocalError(f"cannot log to syslog: {path}: {reason}")


def log_handler(target: str, prog: str, syslog_socket: str = SYSLOG_SOCKET) -> logging.Handler:
    """The handler for a validated `log_target` (stderr, stdout, syslog[:FACILITY], file:PATH)."""
    kind, _, arg = target.partition(":")
    handler: logging.Handler
    if kind in ("stderr", "stdout"):
        stream = sys.stderr if kind == "stderr" else sys.stdout
        handler = LoopBatchingHandler(stream)
        handler.setFormatter(JournalFormatter() if under_journald(stream) else TimedFormatter())
        return handler
    if kind == "syslog":
        _check_syslog(syslog_socket)
        syslog = QuietSysLogHandler(syslog_socket, SysLogHandler.facility_names[arg or "daemon"])
        syslog.ident = f"{prog}[{os.getpid()}]: "
        syslog.setFormatter(LineFormatter())
        return syslog
    try:
        handler = LoopBatchingFileHandler(arg)
    except OSError as e:
        raise LocalError(f"cannot write the log to {arg}: {e.strerror or e}") from None
    handler.setFormatter(TimedFormatter())
    return handler


def one_line(e: BaseException) -> str:
    """The message of a start-up failure on one line (OSError: the file and the reason)."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def report_failure(prog: str, message: str) -> None:
    """One line on stderr; also into the log when it goes elsewhere (a file, syslog), so the log
    says why the daemon stopped."""
    flush_logs()  # the lines before it come first
    journal = under_journald(sys.stderr)
    print(f"{'<3>' if journal else ''}{prog}: {message}", file=sys.stderr, flush=True)
    for h in logging.getLogger().handlers:
        if not (isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr):
            record = logging.LogRecord(prog, logging.ERROR, __file__, 0, "%s", (f"cannot start: {message}",), None)
            h.handle(record)


EVENT_LOOP_ENV = "IKEME_EVENT_LOOP"  # overrides [daemon] event_loop (docs/operations.md, "Event loop")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the daemon runs on: uvloop's (libuv: a wake-up, a ready socket and a timer cost
    less than in asyncio's Python loop) for "uvloop", and for "auto" when it is installed; asyncio's
    own (None) for "asyncio". $IKEME_EVENT_LOOP overrides `choice`. LocalError when uvloop is asked
    for and missing, or the variable names no loop."""
    env = os.environ.get(EVENT_LOOP_ENV)
    if env:
        choice = env.strip().lower()
        if choice not in ("auto", "uvloop", "asyncio"):
            raise LocalError(f"${EVENT_LOOP_ENV}: {env!r} is not auto, uvloop or asyncio")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LocalError("event_loop = \"uvloop\" but the uvloop package is not installed "
                             "(pip install uvloop, or event_loop = \"asyncio\")") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_daemon(prog: str, run: Callable[[], Coroutine[Any, Any, None]], close: Callable[[], None],
               start: Callable[[], None] = lambda: None, event_loop: str = "auto") -> int:
    """``start()`` then ``run()`` on a new event loop (``loop_factory(event_loop)``) until it returns;
    ``close()`` in any case. The exit status: 0, STARTUP_FAILED after one line on what failed
    (``report_failure``), 130 on Ctrl-C."""
    try:
        factory = loop_factory(event_loop)
        logging.getLogger("core_ike.daemon").debug("event loop: %s", "asyncio" if factory is None else "uvloop")
        start()
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run())
    except (LocalError, OSError) as e:
        report_failure(prog, one_line(e))
        return STARTUP_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            close()
        finally:
            flush_logs()
    return 0


class OneLineArgumentParser(argparse.ArgumentParser):
    """Command-line mistakes end like every other start-up failure: one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(STARTUP_FAILED, f"{self.prog}: {message}\n")
