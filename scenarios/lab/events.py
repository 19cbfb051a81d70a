"""Waiting for what the lab's processes report instead of sleeping between looks.

- :class:`Notifications`: a daemon's ``$NOTIFY_SOCKET`` (sd_notify(3), the datagrams a systemd
  Type=notify-reload unit reads: docs/operations.md). A thread reads every datagram as it comes, so the
  daemon never blocks on a full socket queue however often it reloads, and wakes whoever waits for a
  line; the child's pidfd ends the wait at once when the daemon exits first. For a daemon left running
  (``scenarios/run --keep``) a reader process of its own takes over (:meth:`Notifications.keep_reading`).
- :func:`wait_files`: check a condition again each time one of some files changes (inotify on their
  directories: a log line written, a file created), or a process exits (its pidfd), until a deadline.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from inotify_simple import INotify
from inotify_simple import flags as inflags

T = TypeVar("T")

# a file written, closed, created or renamed into place (the directory watch reports its entries)
_CHANGES = inflags.MODIFY | inflags.CLOSE_WRITE | inflags.CREATE | inflags.MOVED_TO | inflags.DELETE


class ProcessExited(RuntimeError):
    """The process a wait was about exited before the awaited event."""


class Notifications:
    """The service manager's side of sd_notify for one run of a daemon: bind the socket, put
    :attr:`env` into the daemon's environment, then :meth:`watch` the started process."""

    def __init__(self, path: Path) -> None:
        if len(os.fsencode(path)) >= 108:  # sun_path
            raise ValueError(f"notification socket path too long for AF_UNIX: {path}")
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        self.lines: list[str] = []
        self.exit_status: int | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pidfd = -1
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)  # close() wakes the reader with it

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def watch(self, proc: Any) -> None:
        """Start reading; `proc` (a Popen) ends every wait once it exits."""
        self._pidfd = os.pidfd_open(proc.pid)
        self._thread = threading.Thread(target=self._read, args=(proc,), name=f"notify {self.path}", daemon=True)
        self._thread.start()

    def _read(self, proc: Any) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.sock.fileno(), self._pidfd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                if self.sock.fileno() in ready:
                    msg = self.sock.recv(65536).decode(errors="replace")
                    with self._cond:
                        self.lines.extend(msg.splitlines())
                        self._cond.notify_all()
                elif self._pidfd in ready:
                    status = proc.wait()
                    self.sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError), self._cond:
                        while True:  # what it sent just before it exited
                            self.lines.extend(self.sock.recv(65536).decode(errors="replace").splitlines())
                    with self._cond:
                        self.exit_status = status
                        self._cond.notify_all()
                    return
        finally:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)

    def mark(self) -> int:
        """Where the next notification's lines will start (for :meth:`wait`'s `since`)."""
        with self._cond:
            return len(self.lines)

    def seen(self, line: str, since: int = 0) -> bool:
        with self._cond:
            return line in self.lines[since:]

    def wait(self, line: str, timeout: float, since: int = 0, what: str = "the daemon") -> int:
        """Block until a notification line equal to `line` (e.g. "READY=1") arrives at or after index
        `since`; returns the index after it. :class:`ProcessExited` when the daemon exits first,
        TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                with contextlib.suppress(ValueError):
                    return self.lines.index(line, since) + 1
                if self.exit_status is not None:
                    raise ProcessExited(f"{what} exited with status {self.exit_status} before {line}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} sent no {line} within {timeout:g} s")
                self._cond.wait(left)

    def close(self) -> None:
        """Stop reading (what arrived stays in :attr:`lines`) and remove the socket."""
        if self.sock.fileno() < 0:
            return
        self._stop()
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def keep_reading(self, start: Callable[[list[str], Sequence[int]], object], pid: int) -> None:
        """Hand the socket to a reader process of its own that outlives this one, for a daemon left
        running (``scenarios/run --keep``): it reads as a service manager would, so the daemon's next
        reload or stop notifies as under systemd instead of finding nobody at its $NOTIFY_SOCKET, and
        writes each notification to its output (`start(argv, pass_fds)` starts it, e.g. Lab.popen
        with a log file); it ends when the daemon `pid` exits."""
        if self.sock.fileno() < 0:
            return
        self._stop()
        try:
            start([sys.executable, "-c", _KEPT_READER, str(self.sock.fileno()), str(pid)], (self.sock.fileno(),))
        finally:
            self.sock.close()  # the reader holds the socket now; the path stays bound

    def _stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)


# Notifications.keep_reading's process: argv socket fd, daemon pid; each datagram's lines to stdout
_KEPT_READER = """\
# the sd_notify reader of a daemon kept running (scenarios/lab/events.py, Notifications.keep_reading)
import os, select, sys
sock, pid = int(sys.argv[1]), int(sys.argv[2])
try:
    pidfd = os.pidfd_open(pid)
except ProcessLookupError:
    sys.exit(0)
while True:
    ready, _, _ = select.select([sock, pidfd], [], [])
    if sock in ready:
        print(os.read(sock, 65536).decode(errors="replace"), flush=True)
    elif pidfd in ready:
        sys.exit(0)
"""


def _pidfd(proc: Any, what: str) -> int:
    """A pidfd of `proc` (readable once it exits); ProcessExited when it is gone already."""
    try:
        return os.pidfd_open(proc.pid)
    except ProcessLookupError:  # exited and reaped already
        raise ProcessExited(f"{proc.args!r} exited with status {proc.wait()} before waiting for {what}") from None


def wait_files(predicate: Callable[[], T | None], timeout: float, files: Iterable[str | Path],
               what: str = "condition", procs: Iterable[Any] = (), backstop: float | None = None) -> T:
    """``predicate()``, then again after each change of one of `files` (written, created, renamed
    into place), until it returns a truthy value; TimeoutError after `timeout` s. A process of
    `procs` (Popen) that exits ends the wait with :class:`ProcessExited`. `backstop`: check again after
    that many seconds without a change too (for a writer whose line may come before the state it
    describes is visible elsewhere)."""
    paths = [Path(f) for f in files]
    deadline = time.monotonic() + timeout
    pidfds: dict[int, Any] = {}
    with INotify() as ino:
        # watched before the first check: a change between the check and the wait is not lost
        for d in {p.parent for p in paths}:
            ino.add_watch(d, _CHANGES)
        names = {p.name for p in paths}
        try:
            for proc in procs:
                pidfds[_pidfd(proc, what)] = proc
            while True:
                value = predicate()
                if value:
                    return value
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        value = predicate()  # a change no file showed (or one at the last moment)
                        if value:
                            return value
                        raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
                    wait = left if backstop is None else min(left, backstop)
                    ready, _, _ = select.select([ino, *pidfds], [], [], wait)
                    if exited := [pidfds[fd] for fd in ready if fd in pidfds]:
                        raise ProcessExited(f"{exited[0].args!r} exited with status {exited[0].wait()} "
                                            f"while waiting for {what}")
                    if not ready or any(e.name in names for e in ino.read(timeout=0)):
                        break
        finally:
            for fd in pidfds:
                os.close(fd)


def wait_daemons(predicate: Callable[[], T | None], timeout: float, daemons: Iterable[Any],
                 what: str = "condition") -> T:
    """``predicate()`` again at each line one of `daemons` (``Iked``, ``Charon``: their ``log_path``)
    logs, until it holds. A charon among them adds a check 0.1 s after its last line: its threads may
    write a line before ``list-sas`` shows the change it describes."""
    ds = list(daemons)
    backstop = min((d.state_backstop for d in ds if d.state_backstop is not None), default=None)
    return wait_files(predicate, timeout, [d.log_path for d in ds], what=what, backstop=backstop)
